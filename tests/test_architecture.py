"""The folders' import rules (README, "Architecture"): what each part of src/metashot may import.

Read from the source with ``ast`` (imports inside functions count too), so a new import that breaks a rule
fails here with the file and the module it named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "metashot"

TRAINING = ("metashot.train", "metashot.trainer", "metashot.train_state", "metashot.train_stop",
            "metashot.frozen", "metashot.factory")
# part of the package -> metashot modules it must never import (prefix match)
FORBIDDEN = {
    "algorithms": ("metashot.data.store", "metashot.data.omniglot", "metashot.data.mini_imagenet",
                   "metashot.data.folder", "metashot.data.text", "metashot.data.sources", "metashot.config",
                   *TRAINING, "metashot.runs", "metashot.checkpoint", "metashot.cli", "metashot.rl",
                   "metashot.evaluate", "metashot.classifier"),
    "data": ("metashot.algorithms", "metashot.nn", *TRAINING, "metashot.runs", "metashot.checkpoint",
             "metashot.cli", "metashot.rl", "metashot.evaluate", "metashot.classifier"),
    "nn": ("metashot.algorithms", *TRAINING, "metashot.runs", "metashot.cli", "metashot.rl",
           "metashot.evaluate", "metashot.classifier", "metashot.config"),
    "rl": ("metashot.algorithms", "metashot.data", *TRAINING, "metashot.cli", "metashot.evaluate",
           "metashot.classifier"),
    "cli.py": ("metashot.algorithms", "metashot.nn"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
    return [(ln, m) for ln, m in out if m == "metashot" or m.startswith("metashot.")]


def _files(part: str) -> list[Path]:
    target = SRC / part
    return [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_import_rules(part: str) -> None:
    files = _files(part)
    assert files, f"nothing found under {SRC / part}"
    broken = [f"{p.relative_to(SRC)}:{ln} imports {m}" for p in files for ln, m in _imports(p)
              if any(m == f or m.startswith(f + ".") for f in FORBIDDEN[part])]
    assert not broken, "import rule broken:\n" + "\n".join(broken)


def test_the_rules_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from metashot.train import Trainer\n")
    assert _imports(bad) == [(2, "metashot.train")]


def test_no_source_file_is_long() -> None:
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"files over 420 lines (split them along their seams): {long}"


# -- no import circles; no algorithm -> algorithm or text -> algorithms import, except shared modules -----

# The modules of algorithms/ that are shared, not algorithms: the contract, the heads' contract and registry,
# and the inner loop of the gradient-based family. Anything else under algorithms/ is one algorithm (or head).
SHARED = {"metashot.algorithms.base", "metashot.algorithms.heads", "metashot.algorithms.inner_loop"}


def _module_name(path: Path, src: Path = SRC.parent) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(path: Path, modules: set[str], src: Path) -> set[str]:
    """The src modules that ``path`` imports (anywhere in it, relative imports and ``from pkg import mod``
    included)."""
    me = _module_name(path, src)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
            sub = [n for n in names[1:] if n in modules]
            out.update(sub or [base])  # `from pkg import mod` depends on mod; `from mod import x`, on mod
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules and m != me}


def _graph(root: Path) -> dict[str, set[str]]:
    files = {_module_name(p, root.parent): p for p in root.rglob("*.py")}
    return {m: _targets(p, set(files), root.parent) for m, p in files.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    circles = _circles(_graph(SRC))
    assert not circles, "modules that import each other (directly or round a loop):\n" + "\n".join(
        " <-> ".join(c) for c in circles)


def _crossings(part: str, graph: dict[str, set[str]] | None = None) -> list[str]:
    """Imports of ``metashot.<part>`` modules (shared ones aside) of a module of algorithms/ that is not
    shared (a head's file may import the heads' package: its contract)."""
    graph = _graph(SRC) if graph is None else graph
    return [f"{m} imports {t}" for m in sorted(graph) if m.startswith(f"metashot.{part}") and m not in SHARED
            for t in sorted(graph[m]) if t.startswith("metashot.algorithms") and t not in SHARED]


def test_an_algorithm_imports_no_other_algorithm() -> None:
    broken = _crossings("algorithms")
    assert not broken, "algorithm -> algorithm imports (share code through a shared module):\n" + "\n".join(
        broken)


def test_text_imports_no_algorithm() -> None:
    broken = _crossings("text")
    assert not broken, "text -> algorithms imports (share code through a shared module):\n" + "\n".join(
        broken)


def test_the_circle_and_crossing_rules_can_fail(tmp_path: Path) -> None:
    pkg = tmp_path / "metashot"
    (pkg / "algorithms").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "algorithms" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from metashot import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    (pkg / "algorithms" / "x.py").write_text("from metashot.algorithms.y import g\n")
    (pkg / "algorithms" / "y.py").write_text("g = 1\n")
    (pkg / "text.py").write_text("from metashot.algorithms import y\n")
    graph = _graph(pkg)
    assert _circles(graph) == [["metashot.a", "metashot.b"]]
    assert _crossings("algorithms", graph) == ["metashot.algorithms.x imports metashot.algorithms.y"]
    assert _crossings("text", graph) == ["metashot.text imports metashot.algorithms.y"]
