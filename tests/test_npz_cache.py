"""engine.npz_cache.TableMemo: one in-process memo over the keyed on-disk table caches (URIEL,
URIEL+). Real files in a tmp folder; the tables are computed from a spec that stands for what
changes them (feature sets, locales, the source's version)."""
import json
import os
import warnings

import numpy as np

from engine.npz_cache import TableMemo, read_tables, write_tables


class Source:
    """A table source whose output depends on its spec; counts how often it was computed."""

    def __init__(self):
        self.spec = {"sets": ["syntax"], "locales": ["de-DE", "nl-NL"], "version": "1"}
        self.computed = 0

    def key(self) -> str:
        return json.dumps(self.spec, sort_keys=True)

    def compute(self):
        self.computed += 1
        rows = len(self.spec["locales"])
        return {f"{s}.values": np.full((rows, 2), float(self.spec["version"]), np.float32)
                for s in self.spec["sets"]}


def _memo(source):
    return TableMemo("t.npz", source.key, source.compute, "test",
                     lambda: [f"{s}.values" for s in source.spec["sets"]])


def test_memo_is_keyed_by_what_changes_the_tables(tmp_path):
    source = Source()
    memo = _memo(source)
    first = memo.tables(tmp_path)
    assert source.computed == 1 and (tmp_path / "t.npz").is_file()
    assert memo.tables(tmp_path) is first and source.computed == 1
    assert _memo(source).tables(tmp_path)["syntax.values"].shape == (2, 2)  # another process reads
    assert source.computed == 1

    for change, check in [(("sets", ["syntax", "geo"]), lambda t: "geo.values" in t),
                          (("locales", ["de-DE", "nl-NL", "fr-FR"]), lambda t: len(t["syntax.values"]) == 3),
                          (("version", "2"), lambda t: t["syntax.values"][0, 0] == 2.0)]:
        before = source.computed
        source.spec[change[0]] = change[1]
        tables = memo.tables(tmp_path)
        assert source.computed == before + 1 and check(tables), change
        assert read_tables(tmp_path / "t.npz", source.key()) is not None  # and written under it
    assert memo.tables(tmp_path, force=True) is not tables and source.computed == 5


def test_a_changed_file_is_read_again_and_a_deleted_one_rebuilt(tmp_path):
    source = Source()
    memo = _memo(source)
    memo.tables(tmp_path)
    path = tmp_path / "t.npz"
    write_tables(path, source.key(), {"syntax.values": np.full((2, 2), 7.0, np.float32)}, "test")
    assert memo.tables(tmp_path)["syntax.values"][0, 0] == 7.0 and source.computed == 1

    write_tables(path, source.key(), {"other.values": np.zeros(1)}, "test")  # older layout
    assert memo.tables(tmp_path)["syntax.values"][0, 0] == 1.0 and source.computed == 2
    os.remove(path)
    memo.tables(tmp_path)
    assert source.computed == 3 and path.is_file()
    memo.clear()
    memo.tables(tmp_path)
    assert source.computed == 3


def test_an_unwritable_folder_keeps_the_tables_in_memory(tmp_path):
    source = Source()
    memo = _memo(source)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = memo.tables(blocker / "cache")
    assert any("keeping it in memory only" in str(w.message) for w in caught)
    assert memo.tables(blocker / "cache") is first and source.computed == 1
