"""How to add a page (issue 13 item 7): one file in ``pages/`` that declares itself. A copy of the app
with one extra page file (nothing else changed) shows the page in its navigation and its "Where to
start" cards, and the page links to others by name."""
import shutil

import pytest

from app_support import APP, ROOT, TIMEOUT, rerun
from dashboard.navigation import PageError, discover, page_path
from streamlit.testing.v1 import AppTest

TOY = '''"""Toy: a page added by a test, as one file."""
PAGE = {"title": "Toy", "icon": ":material/toys:", "order": 4.5, "summary": "A page added as one file."}
import streamlit as st

from dashboard.navigation import page_path

st.title(PAGE["title"])
st.page_link(page_path("Merge"), label="Go to Merge")   # other pages by name, never by file
st.caption(page_path("Merge"))
'''


@pytest.fixture
def app_copy(tmp_path):
    """The app as shipped (app.py and its pages, byte for byte) plus one new page file."""
    shutil.copy(APP, tmp_path / "app.py")
    shutil.copytree(ROOT / "pages", tmp_path / "pages")
    (tmp_path / "pages" / "9_Toy.py").write_text(TOY, encoding="utf-8")
    return tmp_path


def test_a_new_page_file_is_in_the_navigation(app_copy, app_cache):
    shipped = {p.relative_to(ROOT) for p in [APP, *(ROOT / "pages").glob("*.py")]}
    assert all((app_copy / p).read_bytes() == (ROOT / p).read_bytes() for p in shipped)  # nothing else touched

    titles = [p.title for p in discover(app_copy)]
    assert titles.index("Toy") == titles.index("Ensemble") + 1     # placed by its declared order
    assert page_path("Toy", app_copy) == "pages/9_Toy.py"

    at = AppTest.from_file(str(app_copy / "app.py"), default_timeout=TIMEOUT)
    rerun(at)
    cards = [e.proto.label for e in at.get("page_link")]
    assert "5. Toy" in cards and "6. Evolve" in cards                 # the overview's cards, renumbered
    at.switch_page("pages/9_Toy.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Toy"
    assert [c.value for c in at.caption] == ["pages/3_Merge.py"]     # resolved by name in the copied app


def test_a_page_without_its_declaration_is_named(tmp_path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "1_Bare.py").write_text('import streamlit as st\nst.title("Bare")\n')
    with pytest.raises(PageError, match=r"1_Bare.py declares no PAGE"):
        discover(tmp_path)
    (tmp_path / "pages" / "1_Bare.py").write_text('PAGE = {"title": "Bare"}\n')
    with pytest.raises(PageError, match="PAGE lacks icon, order, summary"):
        discover(tmp_path)
    with pytest.raises(PageError, match="no page titled 'Nope'; the pages are: Setup, Similarity"):
        page_path("Nope")
