"""The 52 MASSIVE locales as data: ISO 639-3 code and English name of each, and the fallback code
used where URIEL has no vector for a code. Shared by the lang2vec path (``engine.languages``) and
URIEL+'s (``engine.uriel_plus``), so neither imports the other."""
from typing import Dict, Tuple

# MASSIVE 1.1's 52 locales (1.0's 51 + ca-ES) -> (ISO 639-3 code as lang2vec has it, English name).
# Individual-language codes where URIEL has them (arb, azj, pes, khk, zsm, nob, als, swh, cmn);
# Latvian only as the macrolanguage lav (URIEL has no lvs).
_LOCALES = {
    "af-ZA": ("afr", "Afrikaans"), "am-ET": ("amh", "Amharic"), "ar-SA": ("arb", "Arabic"),
    "az-AZ": ("azj", "Azerbaijani"), "bn-BD": ("ben", "Bengali"), "ca-ES": ("cat", "Catalan"),
    "cy-GB": ("cym", "Welsh"), "da-DK": ("dan", "Danish"), "de-DE": ("deu", "German"),
    "el-GR": ("ell", "Greek"), "en-US": ("eng", "English"), "es-ES": ("spa", "Spanish"),
    "fa-IR": ("pes", "Persian"), "fi-FI": ("fin", "Finnish"), "fr-FR": ("fra", "French"),
    "he-IL": ("heb", "Hebrew"), "hi-IN": ("hin", "Hindi"), "hu-HU": ("hun", "Hungarian"),
    "hy-AM": ("hye", "Armenian"), "id-ID": ("ind", "Indonesian"), "is-IS": ("isl", "Icelandic"),
    "it-IT": ("ita", "Italian"), "ja-JP": ("jpn", "Japanese"), "jv-ID": ("jav", "Javanese"),
    "ka-GE": ("kat", "Georgian"), "km-KH": ("khm", "Khmer"), "kn-IN": ("kan", "Kannada"),
    "ko-KR": ("kor", "Korean"), "lv-LV": ("lav", "Latvian"), "ml-IN": ("mal", "Malayalam"),
    "mn-MN": ("khk", "Mongolian"), "ms-MY": ("zsm", "Malay"), "my-MM": ("mya", "Burmese"),
    "nb-NO": ("nob", "Norwegian Bokmål"), "nl-NL": ("nld", "Dutch"), "pl-PL": ("pol", "Polish"),
    "pt-PT": ("por", "Portuguese"), "ro-RO": ("ron", "Romanian"), "ru-RU": ("rus", "Russian"),
    "sl-SL": ("slv", "Slovenian"), "sq-AL": ("als", "Albanian"), "sv-SE": ("swe", "Swedish"),
    "sw-KE": ("swh", "Swahili"), "ta-IN": ("tam", "Tamil"), "te-IN": ("tel", "Telugu"),
    "th-TH": ("tha", "Thai"), "tl-PH": ("tgl", "Tagalog"), "tr-TR": ("tur", "Turkish"),
    "ur-PK": ("urd", "Urdu"), "vi-VN": ("vie", "Vietnamese"),
    "zh-CN": ("cmn", "Chinese (Simplified)"), "zh-TW": ("cmn", "Chinese (Traditional)"),
}
LOCALES: Tuple[str, ...] = tuple(sorted(_LOCALES))
ISO: Dict[str, str] = {loc: iso for loc, (iso, _) in _LOCALES.items()}
NAMES: Dict[str, str] = {loc: name for loc, (_, name) in _LOCALES.items()}
# Used for one feature set when the code's own vector there is empty: URIEL's family tree has no
# entry for nob (all zeros) but has one for the macrolanguage nor (North Germanic).
FALLBACK_ISO: Dict[str, str] = {"nob": "nor"}
