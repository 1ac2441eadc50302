"""engine.languages: locale table, cosine/top-K/Sinkhorn against hand computations, the weights
pipeline, and the real URIEL vectors (lang2vec imported once, into a session-scoped tmp cache)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine import languages as L

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """The one place the suite pays lang2vec's import: later reads come from this directory."""
    path = tmp_path_factory.mktemp("uriel")
    L.build_cache(path)
    return path


# ----------------------------------------------------------------------------- locales and names

def test_locale_table_has_the_massive_locales_with_lang2vec_codes():
    table = L.locale_table()
    assert len(table) == 52 and len({row["locale"] for row in table}) == 52
    iso = {row["locale"]: row["iso"] for row in table}
    assert iso["zh-CN"] == iso["zh-TW"] == "cmn"
    picks = {"nb-NO": "nob", "ms-MY": "zsm", "sw-KE": "swh", "mn-MN": "khk", "sq-AL": "als",
             "fa-IR": "pes", "lv-LV": "lav", "az-AZ": "azj", "ar-SA": "arb", "tl-PH": "tgl"}
    assert {loc: iso[loc] for loc in picks} == picks
    assert all(row["name"] for row in table) and L.NAMES["de-DE"] == "German"


def test_resolve_locale_normalises_and_suggests():
    assert L.resolve_locale(" de_de ") == "de-DE"
    with pytest.raises(L.UnknownLocaleError) as err:
        L.resolve_locale("de-AT")
    assert isinstance(err.value, ValueError) and "de-AT" in str(err.value)
    assert "de-DE" in err.value.suggestions
    with pytest.raises(L.UnknownLocaleError) as err:
        L.resolve_locale("Swedish")
    assert "sv-SE" in err.value.suggestions
    with pytest.raises(L.UnknownLocaleError):
        L.resolve_locale(42)


def test_parse_features():
    assert L.parse_features("syntax_knn + fam") == ("syntax_knn", "fam")
    assert L.parse_features(["geo"]) == ("geo",)
    for bad, words in [("syntax", "syntax_knn, phonology_knn"), ("learned", "unpickling"),
                       ("fam+fam", "repeated"), ("", "empty"), ("fam|geo", "unknown")]:
        with pytest.raises(L.UnknownFeatureSetError, match=words):
            L.parse_features(bad)


# -------------------------------------------------------------------- cosine, top-K and Sinkhorn

def test_cosine_by_hand_with_zero_vector_and_missing_values():
    sim = L.cosine_similarity([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, np.nan, 1]])
    assert not np.isnan(sim).any()
    assert sim[0, 1] == pytest.approx(1 / np.sqrt(2))
    assert sim[2, 2] == 1 and sim[2, :2].tolist() == [0, 0] and sim[2, 3] == 0  # zero vector
    # row 3 misses feature 1: with row 1 the pair is compared on features 0 and 2 only
    assert sim[1, 3] == pytest.approx(1 / np.sqrt(2)) and sim[3, 1] == sim[1, 3]
    assert sim[0, 3] == pytest.approx(1 / np.sqrt(2))
    assert L.cosine_similarity([[1, 0], [-1, 0]])[0, 1] == pytest.approx(-1)


def test_top_k_keeps_exactly_k_excludes_self_and_breaks_ties_by_order():
    m = np.array([[9, 5, 5, 5],
                  [1, 9, 3, 2],
                  [4, 4, 9, 0],
                  [0, 0, 0, 9.]])
    out = L.top_k_filter(m, 2)
    assert np.all(np.diag(out) == 0)
    assert out[0].tolist() == [0, 5, 5, 0]          # three-way tie: the first two columns win
    assert out[1].tolist() == [0, 0, 3, 2]
    assert out[2].tolist() == [4, 4, 0, 0]
    assert out[3].tolist() == [0, 0, 0, 0]          # two kept entries, both of value 0
    assert np.array_equal(L.top_k_filter(m, 10), m - np.diag(np.diag(m)))  # k > n-1: all others
    with pytest.raises(ValueError, match="top_k"):
        L.top_k_filter(m, 0)


def test_sinkhorn_one_round_by_hand_and_convergence():
    one = L.sinkhorn([[1, 2], [3, 4]], 1)
    # rows -> [1/3, 2/3], [3/7, 4/7]; column sums 16/21 and 26/21
    assert one == pytest.approx(np.array([[7 / 16, 14 / 26], [9 / 16, 12 / 26]]))
    assert np.array_equal(L.sinkhorn([[1, 2], [3, 4]], 0), [[1, 2], [3, 4]])
    m = L.sinkhorn([[1, 2, 3], [4, 5, 6], [7, 8, 10]], 200)
    assert m.sum(axis=0) == pytest.approx(np.ones(3), abs=1e-9)
    assert m.sum(axis=1) == pytest.approx(np.ones(3), abs=1e-9)


def test_sinkhorn_zero_rows_stay_zero_and_bad_input_is_refused():
    m = L.sinkhorn([[0, 0, 0], [1, 0, 1], [2, 1, 0]], 20)
    assert not np.isnan(m).any() and m[0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="nonnegative"):
        L.sinkhorn([[1, -1], [0, 1]], 3)
    with pytest.raises(ValueError, match="sinkhorn_iters"):
        L.sinkhorn([[1]], -1)
    with pytest.raises(ValueError, match="square"):
        L.sinkhorn([[1, 2]], 1)


# ------------------------------------------------------------------------- the weights pipeline

SIM = pd.DataFrame([[1.0, 0.9, 0.5, 0.1],
                    [0.9, 1.0, 0.4, 0.2],
                    [0.5, 0.4, 1.0, 0.3],
                    [0.1, 0.2, 0.3, 1.0]], index=list("tabc"), columns=list("tabc"))


def test_weigh_sources_without_sinkhorn_is_the_similarity_share():
    res = L.weigh_sources(SIM, "t", top_k=2, sinkhorn_iters=0)
    assert res.neighbours == (("a", 0.9), ("b", 0.5))
    assert res.weights == pytest.approx({"a": 0.9 / 1.4, "b": 0.5 / 1.4})
    assert list(res.weights) == ["a", "b"]
    assert L.weigh_sources(SIM, "t", top_k=1, sinkhorn_iters=5).weights == {"a": 1.0}


def test_weigh_sources_one_sinkhorn_round_by_hand():
    # top-2 rows (self excluded): t: a .9 b .5 | a: t .9 b .4 | b: t .5 a .4 | c: b .3 a .2
    # row-normalised: t [0, 9/14, 5/14, 0], a [9/13, 0, 4/13, 0], b [5/9, 4/9, 0, 0], c [0, .4, .6, 0]
    col_a = 9 / 14 + 4 / 9 + 0.4
    col_b = 5 / 14 + 4 / 13 + 0.6
    wa, wb = (9 / 14) / col_a, (5 / 14) / col_b
    res = L.weigh_sources(SIM, "t", top_k=2, sinkhorn_iters=1)
    assert res.weights == pytest.approx({"a": wa / (wa + wb), "b": wb / (wa + wb)})
    assert sum(res.weights.values()) == pytest.approx(1)
    assert res.balanced.loc["c", "c"] == 0 and res.balanced["t"].sum() == pytest.approx(1)


def test_weigh_sources_zero_similarity_target_and_sources():
    sim = pd.DataFrame(L.cosine_similarity([[1, 0], [0, 1], [1, 1], [0, 0]]),
                       index=list("tuvz"), columns=list("tuvz"))
    res = L.weigh_sources(sim, "t", top_k=3)
    assert set(res.weights) == {"v"} and res.weights["v"] == pytest.approx(1)
    assert any("similarity 0" in note for note in res.notes)   # u and z kept but worthless
    with pytest.raises(L.NoSimilarityError, match="z has similarity 0"):
        L.weigh_sources(sim, "z", top_k=2)


# ------------------------------------------------------------------------ real URIEL vectors

def test_real_similarity_matrices_are_well_formed(cache):
    for features in L.FEATURE_SETS + ("syntax_knn+phonology_knn+inventory_knn",):
        m = L.similarity_matrix(features=features, cache_dir=cache)
        assert m.shape == (52, 52) and list(m.index) == list(L.LOCALES)
        assert not m.isna().any().any() and np.allclose(m.values, m.values.T)
        assert np.allclose(np.diag(m.values), 1) and m.values.min() >= 0
        assert m.loc["zh-CN", "zh-TW"] == pytest.approx(1)
    sub = L.similarity_matrix(["pt-PT", "es-ES"], cache_dir=cache)
    assert list(sub.index) == ["pt-PT", "es-ES"]


def test_real_syntax_similarity_of_spanish(cache):
    m = L.similarity_matrix(features="syntax_knn", cache_dir=cache)
    assert min(m.loc["es-ES", "pt-PT"], m.loc["es-ES", "it-IT"]) > m.loc["es-ES", "ja-JP"]
    res = L.target_similarity("es-ES", cache_dir=cache)
    assert len(res.neighbours) == 5 and "es-ES" not in res.weights
    assert {"it-IT", "pt-PT", "ca-ES"} <= {loc for loc, _ in res.neighbours}
    assert sum(res.weights.values()) == pytest.approx(1)
    assert list(res.weights.values()) == sorted(res.weights.values(), reverse=True)
    assert res.table()["weight"].sum() == pytest.approx(1)


def test_real_restricted_sources_and_leave_one_out(cache):
    res = L.target_similarity("es-ES", sources=["ja-JP", "it-IT", "es-ES", "pt-PT"], top_k=5,
                              cache_dir=cache)
    assert set(res.weights) <= {"ja-JP", "it-IT", "pt-PT"}
    assert sum(res.weights.values()) == pytest.approx(1) and res.top_k == 3
    assert any("leave-one-out" in n for n in res.notes)
    assert any("only 3 sources" in n for n in res.notes)
    assert L.target_weights("es-ES", ["it-IT"], cache_dir=cache) == {"it-IT": 1.0}
    with pytest.raises(ValueError, match="no source locales"):
        L.target_weights("es-ES", ["es-ES"], cache_dir=cache)
    with pytest.raises(L.UnknownLocaleError, match="xx-YY"):
        L.target_weights("es-ES", ["xx-YY"], cache_dir=cache)


def test_real_fam_fallback_and_isolates(cache):
    # URIEL's family tree has no entry for nob: the macrolanguage nor's vector stands in
    assert L.vector_sources("fam", cache_dir=cache) == {("nb-NO", "fam"): "nor"}
    res = L.target_similarity("nb-NO", features="fam", cache_dir=cache)
    assert {"da-DK", "sv-SE", "is-IS"} <= set(res.weights)
    assert any("nor's is used" in n for n in res.notes)
    with pytest.raises(L.NoSimilarityError, match="ja-JP"):
        L.target_weights("ja-JP", features="fam", cache_dir=cache)  # no Japonic relative
    assert L.target_weights("ja-JP", features="syntax_knn+fam", cache_dir=cache)


def test_bad_parameters_are_named(cache):
    for kwargs, word in [({"top_k": 0}, "top_k"), ({"top_k": 2.5}, "top_k"),
                         ({"top_k": True}, "top_k"), ({"sinkhorn_iters": -1}, "sinkhorn_iters"),
                         ({"features": "lexical"}, "lexical")]:
        with pytest.raises(ValueError, match=word):
            L.target_weights("de-DE", cache_dir=cache, **kwargs)
    with pytest.raises(L.UnknownLocaleError, match="did you mean"):
        L.target_weights("ge-DE", cache_dir=cache)


def test_later_processes_read_the_cache_without_lang2vec(cache):
    code = ("import sys, json; from engine import languages as L; "
            "w = L.target_weights('de-DE'); "
            "print(json.dumps([w, 'lang2vec.lang2vec' in sys.modules]))")
    env = {**os.environ, L.CACHE_ENV: str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    weights, imported = json.loads(out.stdout)
    assert not imported
    assert weights == pytest.approx(L.target_weights("de-DE", cache_dir=cache))


def test_stale_or_corrupt_cache_is_rebuilt(tmp_path, cache):
    bad = tmp_path / L.CACHE_FILE
    bad.write_bytes(b"not an npz")
    assert L._read(bad) is None
    assert L._read(cache / L.CACHE_FILE) is not None


def test_missing_pkg_resources_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # what setuptools >= 82 leaves behind
    with pytest.raises(L.UrielUnavailableError, match="setuptools<82"):
        L._import_lang2vec()
