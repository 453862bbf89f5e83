"""Issue 29, the first hour: an instant --version, a models table that fits a terminal, one-line errors and
warnings, and eval on a user's folder with its own class count."""

from __future__ import annotations

import subprocess
import sys

import pytest

from metashot.cli import main


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_version_and_help_import_no_torch() -> None:
    """`metashot --version` (and `import metashot`) never import torch: they answer at once."""
    out = _python("import sys\nfrom metashot.cli import main\ntry:\n    main(['--version'])\n"
                  "except SystemExit as e:\n    assert e.code == 0\n"
                  "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))")
    assert out.splitlines() == ["metashot 0.1.0", "[]"]


def test_lazy_package_keeps_its_public_names() -> None:
    """The lazy package still gives the function metashot.evaluate after the module of that name was imported
    first, and its submodules as attributes."""
    out = _python("import metashot\nimport metashot.evaluate\nfrom metashot import evaluate, load\n"
                  "print(callable(evaluate), evaluate.__module__, metashot.evaluate is evaluate,"
                  " load.__name__, metashot.checkpoint.__name__)")
    assert out.split() == ["True", "metashot.evaluate", "True", "load", "metashot.checkpoint"]


def test_models_table_fits_100_columns(capsys: pytest.CaptureFixture[str]) -> None:
    """The table fits 100 columns (the cards once ran to 300 characters); --long gives every field."""
    from metashot.checkpoint import bundled_names

    names = bundled_names()
    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert max(map(len, table)) <= 100 and table[0].split()[:2] == ["name", "domain"]
    assert len(table) > len(names)  # long figures wrap onto indented lines instead of running on
    assert main(["models", "--long"]) == 0
    long = capsys.readouterr().out.splitlines()
    assert max(map(len, long)) <= 100
    for field in ("domain:", "input:", "training:", "measured:", "path:"):
        assert sum(ln.startswith(f"  {field}") for ln in long) == len(names), field


def test_load_on_a_missing_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """metashot.load(name, device="cuda") without CUDA: the CLI's one-line error, not torch's traceback."""
    import torch

    import metashot

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as e:
        metashot.load("protonet-omniglot", device="cuda")
    msg = str(e.value)
    assert "\n" not in msg and "CUDA is not available" in msg and "device='cpu'" in msg, msg
    assert "protonet-omniglot" in msg
    with pytest.raises(ValueError, match="not a torch device"):
        metashot.load("protonet-omniglot", device="gpu0")
    assert str(metashot.load("protonet-omniglot", device="cpu").device) == "cpu"


def test_cli_warnings_are_one_clean_line() -> None:
    """A warning printed during a command is `metashot CMD: warning: ...` alone: no file, line number or
    source line (run in a fresh interpreter, where Python prints warnings as it does for the command)."""
    code = ("import warnings\nfrom metashot.messages import one_line_warnings\n"
            "with one_line_warnings('metashot predict'):\n"
            "    warnings.warn('2 of 5 fit images look like colour photos;\\n  this model reads drawings')\n"
            "    warnings.warn('an old option', DeprecationWarning)\n"
            "warnings.warn('after the command')\n")
    r = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                       check=True)
    err = r.stderr.splitlines()
    assert err[:2] == ["metashot predict: warning: 2 of 5 fit images look like colour photos; this model "
                       "reads drawings", "metashot predict: warning (DeprecationWarning): an old option"], err
    assert "metashot" not in " ".join(err[2:]) and "after the command" in " ".join(err[2:])  # restored after


def test_main_runs_every_command_under_one_line_warnings(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import contextlib

    import metashot.cli

    used = []
    monkeypatch.setattr(metashot.cli, "one_line_warnings", lambda prefix: used.append(prefix)
                        or contextlib.nullcontext())
    assert main(["models", "--json"]) == 0
    assert used == ["metashot models"]


def _drawings(root, classes: int, per_class: int = 3):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            ink = rng.random((28, 28)) < 0.15
            Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).save(root / f"c{c:02d}" / f"{i}.png")
    return root


@pytest.mark.parametrize(("classes", "ways"), [(3, 3), (10, 10), (25, 20)])
def test_eval_folder_defaults_to_its_class_count(tmp_path, capsys: pytest.CaptureFixture[str], classes: int,
                                                 ways: int) -> None:
    """`eval --dataset folder` without --ways: the folder's classes, up to 20 (it was 5-way, and 3 failed)."""
    import json

    folder = _drawings(tmp_path / "labelled", classes)
    args = ["eval", "protonet-omniglot", "--dataset", "folder", "--split", str(folder), "--shots", "1",
            "--queries", "1", "--episodes", "4", "--json", "--quiet"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["ways"] == ways
    assert main([*args, "--ways", "2"]) == 0  # --ways still sets it
    assert json.loads(capsys.readouterr().out)["ways"] == 2


def test_eval_folder_of_one_class_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _drawings(tmp_path / "one", 1)
    assert main(["eval", "protonet-omniglot", "--dataset", "folder", "--split", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 2 classes" in err and str(folder) in err, err


def test_eval_help_states_the_folder_default() -> None:
    from metashot.cli import build_parser

    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["eval"].format_help().split())
    assert "with --dataset folder, the folder's class count up to 20" in help_text
