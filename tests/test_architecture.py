"""The folders' import rules (README, "Architecture"): what each part of src/metashot may import.

Read from the source with ``ast`` (imports inside functions count too), so a new import that breaks a rule
fails here with the file and the module it named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "metashot"

# part of the package -> metashot modules it must never import (prefix match)
FORBIDDEN = {
    "algorithms": ("metashot.data.store", "metashot.data.omniglot", "metashot.data.mini_imagenet",
                   "metashot.data.folder", "metashot.data.text", "metashot.data.sources", "metashot.config",
                   "metashot.train", "metashot.runs", "metashot.checkpoint", "metashot.cli", "metashot.rl",
                   "metashot.evaluate", "metashot.classifier"),
    "data": ("metashot.algorithms", "metashot.nn", "metashot.train", "metashot.runs", "metashot.checkpoint",
             "metashot.cli", "metashot.rl", "metashot.evaluate", "metashot.classifier"),
    "nn": ("metashot.algorithms", "metashot.train", "metashot.runs", "metashot.cli", "metashot.rl",
           "metashot.evaluate", "metashot.classifier", "metashot.config"),
    "rl": ("metashot.algorithms", "metashot.data", "metashot.train", "metashot.cli", "metashot.evaluate",
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
