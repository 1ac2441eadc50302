"""URIEL+ beside lang2vec (issue 16.1), on urielplus 1.3.2's real files: they are numeric and read
without pickle; our vectorised distances and confidences equal the library's own functions; the
``urielplus_*`` feature sets work through similarity, weights and the transfer predictor; and
nothing is written into the package folder."""
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from engine import uriel_plus as U

CODES = ["por", "spa", "fra", "pol", "nob", "azj", "jpn"]  # azj: no syntactic data; por: no phonological


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def databases():
    root = U.database_dir()
    names = ("family_features.npz", "features.npz", "geocoord_features.npz", "script_features.npz")
    return [U.load_database(name, root) for name in names]


@pytest.fixture(scope="module")
def library(databases):
    """URIEL+'s own querying code over the same arrays (``URIELPlus()`` itself would first copy its
    files into its package folder and read them with allow_pickle=True)."""
    from urielplus.urielplus_querying import URIELPlusQuerying

    logging.getLogger().setLevel(logging.WARNING)  # it logs every distance at INFO
    return URIELPlusQuerying(*[[db[k] for db in databases] for k in ("feats", "langs", "data", "sources")])


@pytest.fixture(scope="module")
def uplus_cache(tmp_path_factory):
    """A cache with lang2vec's vectors and URIEL+'s distances; the package folder before and after."""
    from engine import languages as L

    cache = tmp_path_factory.mktemp("urielplus")
    package = U.database_dir().parent.parent
    before = _listing(package)
    built = L.default_cache_dir() / L.CACHE_FILE
    if built.is_file():  # lang2vec's own cache is tested in test_languages.py; skip its 6 s import
        shutil.copy(built, cache / L.CACHE_FILE)
    L.build_cache(cache)
    U.build_cache(cache)
    return cache, before, _listing(package)


def test_the_files_are_numeric_and_an_object_array_is_refused(databases, tmp_path):
    for db in databases:
        assert db["data"].dtype.kind == "f" and db["data"].ndim == 3
        assert all(db[k].dtype.kind == "U" for k in ("feats", "langs", "sources"))
    np.savez(tmp_path / "features.npz", feats=np.array(["S_SVO"]), langs=np.array(["por"]),
             sources=np.array(["WALS"]), data=np.array([[[{"not": "numbers"}]]], dtype=object))
    with pytest.raises(U.UrielPlusDataError, match="object array, which only unpickling could read"):
        U.load_database("features.npz", tmp_path)
    with pytest.raises(U.UrielPlusDataError, match=r"not a URIEL\+ database file"):
        U.load_database("missing.npz", tmp_path)


def test_vectors_distances_and_confidence_equal_the_librarys(databases, library):
    by_file = {"family_features.npz": databases[0], "features.npz": databases[1],
               "geocoord_features.npz": databases[2]}
    off = ~np.eye(len(CODES), dtype=bool)
    for distance, (name, _) in U._LAYOUT.items():
        db = by_file[name]
        ours = U.language_vectors(db, CODES, distance)
        theirs = library.get_vector(distance, CODES)
        expected = np.array([theirs[c] for c in CODES], dtype=float)
        np.testing.assert_allclose(ours, np.where(expected == -1, np.nan, expected), atol=1e-6)
        distances = U.angular_distances(ours)
        if distance == "genetic":  # the library takes ~2.6 s a pair here: two pairs
            for j in (1, 3):
                assert distances[0, j] == pytest.approx(library.new_distance(distance, CODES[0], CODES[j]), abs=1e-6)
        else:
            lib = np.asarray(library.new_distance(distance, CODES), dtype=float)
            np.testing.assert_allclose(distances[off], np.where(lib == -1, np.nan, lib)[off], atol=1e-6)
        per_language = U.language_confidence(db, CODES, distance)
        for j in (1, 4):
            pair = (per_language[0] + per_language[j]) / 2
            assert pair == pytest.approx(library.confidence_score(CODES[0], CODES[j], distance), abs=1e-12)
    # the test can fail: the data really has gaps where the library has no distance
    assert np.isnan(U.angular_distances(U.language_vectors(databases[1], CODES, "syntactic"))[5]).all()


def test_cache_and_matrices_leave_the_package_folder_alone(uplus_cache):
    cache, before, after = uplus_cache
    assert before == after  # URIELPlus() would have copied four files into database/
    with np.load(cache / U.CACHE_FILE, allow_pickle=False) as npz:
        assert {f"{d}.distance" for d in U.DISTANCES} <= set(npz.files)
    d = U.distance_matrix("syntactic", cache)
    assert d.shape == (52, 52) and np.allclose(d.fillna(-1), d.T.fillna(-1))
    # URIEL+'s syntactic distance puts Spanish nearest Portuguese (lang2vec's syntax_knn: a tie further down)
    row = d.loc["pt-PT", ["es-ES", "fr-FR", "it-IT", "pl-PL", "ru-RU"]]
    assert row.idxmin() == "es-ES" and row["es-ES"] == pytest.approx(0.229)
    sim = U.similarity_matrix("phonological", cache)
    assert np.isnan(U.distance_matrix("phonological", cache).at["pt-PT", "es-ES"]) and sim.at["pt-PT", "es-ES"] == 0
    conf = U.pair_confidence("pt-PT", ["es-ES", "fr-FR"], ["syntactic", "genetic"], cache)
    assert ((conf > 0) & (conf <= 1)).all().all()


def test_urielplus_sets_through_similarity_and_weights(uplus_cache):
    from engine import languages as L

    cache = uplus_cache[0]
    assert L.parse_features("urielplus_genetic+syntax_knn") == ("urielplus_genetic", "syntax_knn")
    with pytest.raises(L.UnknownFeatureSetError, match="urielplus_syntactic"):
        L.parse_features("urielplus_script")
    sources = ["es-ES", "fr-FR", "it-IT", "pl-PL", "ru-RU", "de-DE", "az-AZ"]
    res = L.target_similarity("pt-PT", sources, features="urielplus_syntactic", top_k=3, cache_dir=cache)
    assert [loc for loc, _ in res.neighbours][0] == "es-ES" and sum(res.weights.values()) == pytest.approx(1)
    assert any("no syntactic feature shared by pt-PT and az-AZ" in n for n in res.notes)
    with pytest.raises(L.NoSimilarityError, match="urielplus_phonological"):
        L.target_weights("pt-PT", sources, features="urielplus_phonological", cache_dir=cache)
    mixed = L.similarity_matrix(["pt-PT", "es-ES"], "syntax_knn+urielplus_genetic", cache)
    parts = (L.similarity_matrix(["pt-PT", "es-ES"], "syntax_knn", cache)
             + L.similarity_matrix(["pt-PT", "es-ES"], "urielplus_genetic", cache)) / 2
    pd.testing.assert_frame_equal(mixed, parts)
    with pytest.raises(L.UnknownFeatureSetError, match="distances, not vectors"):
        L.feature_vectors("urielplus_genetic", cache_dir=cache)


def test_transfer_predictor_on_urielplus_typology(tiny_ws, uplus_cache):
    from engine.transfer import TYPOLOGIES, TransferError, evaluate_rankers, fit_leave_target_out
    from engine.transfer import train_sizes, zero_shot_matrix

    cache = uplus_cache[0]
    matrix, sizes = zero_shot_matrix(tiny_ws, "validation"), train_sizes(tiny_ws)
    model = fit_leave_target_out(matrix, "nl-NL", sizes, cache, typology="urielplus")
    assert list(model.coefficients()) == list(TYPOLOGIES["urielplus"])
    assert "urielplus_coverage" in model.coefficients()
    pred = model.predict(["de-DE", "en-US", "es-ES"])
    assert all(np.isfinite(list(pred.values())))
    report = evaluate_rankers(matrix, matrix, sizes, cache_dir=cache, typology="both")
    rankers = [r["ranker"] for r in report["table"]]
    assert "syntactic" in rankers and "urielplus_syntactic" in rankers and rankers[-1] == "predictor"
    with pytest.raises(TransferError, match="unknown typology 'wals'"):
        fit_leave_target_out(matrix, "nl-NL", sizes, cache, typology="wals")


def test_similarity_page_offers_urielplus_with_confidence_and_says_how_ties_break(app_cache, uplus_cache):
    from app_support import goto, open_app, rerun

    from engine.languages import CACHE_FILE

    for name in (CACHE_FILE, U.CACHE_FILE):  # both caches ready: the page needs no job first
        shutil.copy(uplus_cache[0] / name, app_cache / name)
    at = goto(open_app(), "Similarity")
    captions = " ".join(c.value for c in at.caption)
    assert "broken by locale name, alphabetically" in captions and "named in a note" in captions
    chooser = at.multiselect(key="sim_features")
    assert set(U.URIEL_PLUS_SETS) <= set(chooser.options)
    chooser.set_value(["urielplus_syntactic"])
    rerun(at)
    assert not at.exception
    table = at.dataframe[0].value
    assert {"URIEL+ agreement", "URIEL+ coverage"} <= set(table.columns)
    assert ((table["URIEL+ coverage"] > 0) & (table["URIEL+ coverage"] <= 1)).all()
    assert at.session_state["experiment"].features == "urielplus_syntactic"


# the one memo (engine.npz_cache.TableMemo) over both typology caches
_KEY_CHANGES = [  # (module name, what changes the tables, how to change it)
    ("languages", "feature sets", lambda mp, m: mp.setattr(m, "FEATURE_SETS", m.FEATURE_SETS[:-1])),
    ("languages", "a locale's code", lambda mp, m: mp.setitem(m.ISO, "nb-NO", "nor")),
    ("languages", "fallback codes", lambda mp, m: mp.setitem(m.FALLBACK_ISO, "nob", "nno")),
    ("languages", "file format", lambda mp, m: mp.setattr(m, "_FORMAT", m._FORMAT + 1)),
    ("languages", "lang2vec version", lambda mp, m: mp.setattr(m, "_installed_version", lambda: "0.test")),
    ("uriel_plus", "distances", lambda mp, m: mp.setattr(m, "DISTANCES", m.DISTANCES[:-1])),
    ("uriel_plus", "a locale's code", lambda mp, m: mp.setitem(m.ISO, "nb-NO", "nor")),
    ("uriel_plus", "file format", lambda mp, m: mp.setattr(m, "_FORMAT", m._FORMAT + 1)),
    ("uriel_plus", "urielplus version", lambda mp, m: mp.setattr(m, "_installed_version", lambda: "0.test")),
]


@pytest.mark.parametrize("module_name, what, change", _KEY_CHANGES, ids=[f"{m}-{w}" for m, w, _ in _KEY_CHANGES])
def test_memo_is_keyed_by_what_changes_the_tables(uplus_cache, tmp_path, monkeypatch, module_name, what, change):
    """A changed key never returns the copy read under the old one: the file is read again (here one
    written under the new key, so nothing is rebuilt)."""
    import importlib

    from engine.npz_cache import write_tables

    module = importlib.import_module(f"engine.{module_name}")
    shutil.copy(uplus_cache[0] / module.CACHE_FILE, tmp_path / module.CACHE_FILE)
    old_key, old = module._cache_key(), module._memo.tables(tmp_path)
    assert "marker" not in old
    change(monkeypatch, module)
    assert module._cache_key() != old_key, what
    write_tables(tmp_path / module.CACHE_FILE, module._cache_key(), {**old, "marker": np.ones(1)}, "test")
    assert "marker" in module._memo.tables(tmp_path)


def test_a_cache_file_rewritten_by_another_process_is_read_again(uplus_cache, tmp_path):
    """Old memos were keyed by path alone and kept the first copy until the process ended."""
    from engine import languages as L
    from engine.npz_cache import read_tables, write_tables

    for name in (L.CACHE_FILE, U.CACHE_FILE):
        shutil.copy(uplus_cache[0] / name, tmp_path / name)
    pair = ["de-DE", "nl-NL"]
    assert L.similarity_matrix(pair, "syntax_knn", tmp_path).at["de-DE", "nl-NL"] < 0.99
    mixed = L.similarity_matrix(pair, "syntax_knn+urielplus_syntactic", tmp_path).at["de-DE", "nl-NL"]

    uriel = read_tables(tmp_path / L.CACHE_FILE, L._cache_key())
    values = uriel["syntax_knn.values"].copy()
    values[L.LOCALES.index("de-DE")] = values[L.LOCALES.index("nl-NL")]  # German now reads as Dutch
    write_tables(tmp_path / L.CACHE_FILE, L._cache_key(), {**uriel, "syntax_knn.values": values}, "test")
    assert L.similarity_matrix(pair, "syntax_knn", tmp_path).at["de-DE", "nl-NL"] == pytest.approx(1.0)

    plus = read_tables(tmp_path / U.CACHE_FILE, U._cache_key())
    write_tables(tmp_path / U.CACHE_FILE, U._cache_key(),
                 {**plus, "syntactic.distance": np.zeros_like(plus["syntactic.distance"])}, "test")
    assert (U.distance_matrix("syntactic", tmp_path).to_numpy() == 0).all()
    assert L.similarity_matrix(pair, "syntax_knn+urielplus_syntactic", tmp_path).at["de-DE", "nl-NL"] \
        == pytest.approx(1.0) != pytest.approx(mixed)
