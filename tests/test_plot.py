"""`metashot plot RUN_DIR`: PNG learning curves from metrics.jsonl; a clear error without matplotlib."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from metashot.cli import main
from metashot.plot import plot_run, read_metrics


def write_run(run: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(10, 101, 10):
        lines.append({"step": s, "loss": 2.0 / (1 + s / 20), "acc": min(0.95, 0.3 + s / 150), "lr": 1e-3})
        if s % 30 == 0:
            lines.append({"step": s, "val_acc": 40.0 + s / 3, "val_ci95": 2.5})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "config.yaml").write_text(json.dumps({"name": "plot-test"}))


def test_read_metrics_splits_train_and_validation(tmp_path: Path) -> None:
    write_run(tmp_path)
    train, val = read_metrics(tmp_path)
    assert [r["step"] for r in train] == list(range(10, 101, 10))
    assert [r["step"] for r in val] == [30, 60, 90]


def test_cli_plot_writes_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is part of the dev environment")
    write_run(tmp_path)
    assert main(["plot", str(tmp_path)]) == 0
    png = tmp_path / "learning_curves.png"
    assert capsys.readouterr().out.strip() == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > im.size[1] > 300  # two panels side by side


def test_missing_matplotlib_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'metashot\[plot\]'"):
        plot_run(tmp_path)
    assert main(["plot", str(tmp_path)]) == 2
    assert "needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "learning_curves.png").exists()


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        plot_run(tmp_path)
