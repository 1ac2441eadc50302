"""Navigation by name: every page file in ``pages/`` declares itself in one line,

    PAGE = {"title": "Merge", "icon": ":material/merge:", "order": 3, "summary": "Merge the sources …"}

and the app builds its navigation and its "Where to start" cards from those declarations, in their
order; other code links to a page by its title (``page_path("Compare")``), never by its file name.
So adding a page is adding one file. The declaration is read as a literal, without running the page.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

PAGES_FOLDER = "pages"
ROOT = Path(__file__).resolve().parent.parent  # the app's own folder (app.py)
FIELDS = ("title", "icon", "order", "summary")


class PageError(ValueError):
    """A page file whose declaration is missing or wrong, or a title no page has."""


@dataclass(frozen=True)
class PageInfo:
    path: str       # relative to the app's folder, as st.Page, st.page_link and AppTest take it
    title: str
    icon: str
    order: float
    summary: str


def app_dir() -> Path:
    """The folder of the running app's main script (its pages sit beside it); outside a run, this repo's."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx(suppress_warning=True)
    except ImportError:  # pragma: no cover - streamlit is a dependency of the dashboard
        ctx = None
    return Path(ctx.main_script_path).resolve().parent if ctx and ctx.main_script_path else ROOT


def _declaration(path: Path) -> dict:
    """The literal ``PAGE = {...}`` of a page file, checked."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PAGE" for t in node.targets):
            try:
                page = ast.literal_eval(node.value)
            except ValueError:
                raise PageError(f"{path}: PAGE must be a literal dict of {', '.join(FIELDS)}") from None
            missing = [f for f in FIELDS if f not in (page if isinstance(page, dict) else {})]
            if missing:
                raise PageError(f"{path}: PAGE lacks {', '.join(missing)}; declare {', '.join(FIELDS)}")
            return page
    raise PageError(f"{path} declares no PAGE = {{...}}; add one line with its {', '.join(FIELDS)} "
                    f"(see dashboard/navigation.py), or name the file with a leading '_' if it is no page")


@lru_cache(maxsize=8)
def _discover(folder: str, stamps: Tuple[Tuple[str, int], ...]) -> Tuple[PageInfo, ...]:
    pages = []
    for name, _ in stamps:
        page = _declaration(Path(folder) / name)
        pages.append(PageInfo(f"{PAGES_FOLDER}/{name}", str(page["title"]), str(page["icon"]),
                              float(page["order"]), str(page["summary"])))
    titles = [p.title for p in pages]
    twice = sorted({t for t in titles if titles.count(t) > 1})
    if twice:
        raise PageError(f"{folder}: more than one page is titled {', '.join(map(repr, twice))}")
    return tuple(sorted(pages, key=lambda p: (p.order, p.path)))


def discover(app_folder: Optional[Path] = None) -> List[PageInfo]:
    """Every page of the app in ``app_folder`` (default: the running app's), in declared order."""
    folder = Path(app_folder or app_dir()) / PAGES_FOLDER
    files = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    return list(_discover(str(folder), tuple((p.name, p.stat().st_mtime_ns) for p in files)))


def page_path(title: str, app_folder: Optional[Path] = None) -> str:
    """The path of the page titled ``title`` ("Compare" -> "pages/6_Compare.py"), for st.page_link,
    st.switch_page and AppTest.switch_page."""
    pages = discover(app_folder)
    for page in pages:
        if page.title == title:
            return page.path
    raise PageError(f"no page titled {title!r}; the pages are: {', '.join(p.title for p in pages)}")
