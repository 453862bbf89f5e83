"""A checkpoint whose outputs are not finite is refused by predict, the Python API and lake, as by eval
(issue 27 item 1): never a label with confidence nan, an accuracy or an error rate from NaN scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metashot
from metashot.checkpoint import build_learner, save_checkpoint
from metashot.cli import main
from metashot.config import Config
from metashot.data.omniglot import OMNIGLOT_SPEC


def _nan_checkpoint(tmp_path: Path) -> Path:
    """A tiny ProtoNet checkpoint with one NaN weight (its SHA-256 matches: only the numbers are bad)."""
    cfg = Config()
    cfg.model.backbone_args = {"hidden": 8, "out_channels": 8}
    torch.manual_seed(0)
    learner = build_learner(dict(cfg.model.__dict__))
    with torch.no_grad():
        next(learner.parameters()).view(-1)[0] = float("nan")
    return save_checkpoint(tmp_path / "nan-ck", learner, cfg.to_dict(),
                           extra={"image_spec": OMNIGLOT_SPEC.to_dict()})


def _drawings(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = np.full((40, 40), 255, np.uint8)
        a[rng.integers(0, 30) :][:10, 5:35] = 0
        out.append(a)
    return out


def test_python_api_refuses_non_finite_scores(tmp_path: Path) -> None:
    clf = metashot.load(_nan_checkpoint(tmp_path))
    clf.fit(_drawings(4, 0), ["a", "a", "b", "b"])
    for call in (clf.predict, clf.predict_proba, clf.decision_function):
        with pytest.raises(ValueError, match=r"nan-ck.*not finite \(\d+ of \d+ NaN/Inf\)"):
            call(_drawings(3, 1))
    with pytest.raises(ValueError, match="not finite"):
        clf.score(_drawings(3, 1), ["a", "b", "a"])


def test_cli_predict_refuses_non_finite_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = _nan_checkpoint(tmp_path)
    sup, qry = tmp_path / "support", tmp_path / "query"
    for c in ("a", "b"):
        (sup / c).mkdir(parents=True)
        for i, im in enumerate(_drawings(2, ord(c))):
            Image.fromarray(im).save(sup / c / f"{i}.png")
    qry.mkdir()
    for i, im in enumerate(_drawings(2, 9)):
        Image.fromarray(im).save(qry / f"q{i}.png")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(ck), "--support", str(sup), "--query", str(qry), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("metashot predict: error:") and "not finite" in last and "Traceback" not in err
    assert not out.exists() or "nan" not in out.read_text()
