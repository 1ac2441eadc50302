"""The layering, read from the source with ``ast`` (function-level imports included, since a lazy
import is still a dependency): the engine never reaches the UI, and its modules import each other
without cycles, so any module can be read, tested and moved on its own."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "engine"
UI_PACKAGES = ("streamlit", "dashboard", "pages")

# Cycles allowed, each as the sorted module names of its strongly connected component.
ALLOWED_CYCLES: Set[Tuple[str, ...]] = set()  # none left; add one only with the reason beside it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}


def imports(path: Path, name: str) -> Iterator[Tuple[str, int]]:
    """Every name an import in the file refers to, at any depth (function bodies too), relative
    imports resolved: ``from .pkg import x`` yields ``engine.pkg.x`` (a submodule or a name in
    ``engine.pkg``: :func:`resolve` tells which)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            base = ".".join(base + (node.module.split(".") if node.module else []))
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def resolve(target: str, modules: Dict[str, Path]) -> str:
    """The engine module an imported name lives in: the longest module prefix of it ('' if none)."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return ""


def import_graph() -> Dict[str, Set[str]]:
    """Edge A -> B when A imports B or a name from B. ``from . import x`` counts as importing the
    submodule x only (not its package, which the name was merely spelled through).

    Left out: a module's edges to its own packages (``from . import MERGES`` in engine/merge/linear.py).
    A registry package's __init__ imports its method modules so they register, and they take the
    registry object from it; Python runs a package's __init__ before any of its submodules anyway, so
    that edge adds no import order of its own (an order problem there fails every test on import)."""
    modules = engine_modules()
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        found = {resolve(target, modules) for target, _ in imports(path, name)}
        graph[name] = {m for m in found if m and m != name and not name.startswith(m + ".")}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def a_cycle(graph: Dict[str, Set[str]], component: List[str]) -> List[str]:
    """One concrete loop through the component, for the failure message (A -> B -> ... -> A)."""
    members, start = set(component), component[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(graph[path[-1]] & members)
        back = [m for m in nxt if m in seen]
        if back:
            return path[path.index(back[0]):] + [back[0]]
        step = next(m for m in nxt if m not in seen)
        path.append(step)
        seen.add(step)


def test_engine_never_imports_the_ui():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {target}"
           for name, path in engine_modules().items() for target, line in imports(path, name)
           if target.split(".")[0] in UI_PACKAGES]
    assert not bad, "the engine must not import the UI:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycles_among_engine_modules():
    graph = import_graph()
    found = [c for c in cycles(graph) if tuple(c) not in ALLOWED_CYCLES]
    assert not found, "import cycles (lazy imports count):\n" + "\n".join(
        " -> ".join(a_cycle(graph, c)) for c in found)


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path):
    """The checker itself: a cycle closed only by a function-level import is found and printed."""
    graph = {"engine.a": {"engine.b"}, "engine.b": {"engine.c"}, "engine.c": {"engine.a"}, "engine.d": set()}
    assert cycles(graph) == [["engine.a", "engine.b", "engine.c"]]
    assert a_cycle(graph, ["engine.a", "engine.b", "engine.c"]) == ["engine.a", "engine.b", "engine.c", "engine.a"]
    pkg = tmp_path / "engine" / "sweep"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runner.py").write_text("def f():\n    from ..report import load\n    from . import spec\n")
    found = {t for t, _ in imports(pkg / "runner.py", "engine.sweep.runner")}
    assert found == {"engine.report.load", "engine.sweep.spec"}
    modules = {"engine.report": pkg, "engine.sweep": pkg, "engine.sweep.spec": pkg}
    assert {resolve(t, modules) for t in found} == {"engine.report", "engine.sweep.spec"}


def test_the_cli_imports_its_command_groups_by_name_not_by_string():
    text = "\n".join(p.read_text(encoding="utf-8") for p in (ENGINE / "cli").glob("*.py"))
    assert "importlib" not in text


def test_ray_is_used_through_one_module():
    """Sweeps and evolution pass their work to engine/parallel.py; nothing else starts or calls Ray."""
    users = sorted(name for name, path in engine_modules().items()
                   if any(target.split(".")[0] == "ray" for target, _ in imports(path, name)))
    assert users == ["engine.parallel"]
