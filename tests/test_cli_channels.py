"""`metashot eval` of a checkpoint on data with another channel count: one clear line, never a convolution's
shape error. A 1-channel model (the bundled Omniglot ProtoNet) on mini-ImageNet's photos, and a tiny 3-channel
model on Omniglot's drawings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from metashot.checkpoint import build_learner, save_checkpoint
from metashot.cli import main
from metashot.config import Config
from metashot.data.checks import check_channels
from metashot.data.preprocess import ImageSpec
from metashot.data.store import ClassStore

RAW_ERRORS = ("weight of size", "groups=", "expected input", "channels, but got", "Traceback")


@pytest.fixture(scope="module")
def mini_root(data_root: Path) -> Path:
    root = Path(os.environ["METASHOT_DATA"])
    if not (root / "mini_imagenet" / "mini_imagenet_sample.zip").is_file():
        pytest.fail(f"test data missing: {root}/mini_imagenet/mini_imagenet_sample.zip (set METASHOT_DATA "
                    f"to the shared data folder)", pytrace=False)
    return root


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("metashot eval:")]
    assert len(lines) == 1, err
    assert not any(s in err for s in RAW_ERRORS), err
    return lines[0]


def _rgb_checkpoint(tmp_path: Path) -> Path:
    """A tiny conv4 ProtoNet for 3-channel 28x28 images, trained on (as its config says) mini-ImageNet."""
    cfg = Config()
    cfg.data.dataset, cfg.data.image_size = "mini_imagenet", 28
    cfg.model.backbone_args = {"in_channels": 3, "hidden": 8, "out_channels": 8}
    torch.manual_seed(0)
    learner = build_learner(dict(cfg.model.__dict__))
    spec = ImageSpec(size=28, channels=3, resize_filter="bilinear")
    return save_checkpoint(tmp_path / "rgb", learner, cfg.to_dict(), extra={"image_spec": spec.to_dict()})


@pytest.mark.slow
def test_one_channel_checkpoint_on_photos(mini_root: Path, capsys) -> None:
    rc = main(["eval", "protonet-omniglot", "--dataset", "mini_imagenet", "--episodes", "2", "--quiet"])
    assert rc == 2
    line = _error_line(capsys)
    assert line.startswith("metashot eval: error: checkpoint protonet-omniglot expects 1-channel 28x28 "
                           "images (its preprocessing)")
    assert "dataset mini_imagenet/test has 3-channel images" in line
    assert "its own kind (omniglot)" in line and "trained on 3-channel images" in line


@pytest.mark.slow
def test_three_channel_checkpoint_on_drawings(tmp_path: Path, mini_root: Path, capsys) -> None:
    ck = _rgb_checkpoint(tmp_path)
    # the official 5-alphabet set keeps the decode small; any Omniglot split is 1-channel
    rc = main(["eval", str(ck), "--dataset", "omniglot", "--split", "background_small1", "--episodes", "2",
               "--quiet"])
    assert rc == 2
    line = _error_line(capsys)
    assert f"checkpoint {ck} expects 3-channel 28x28 images (its preprocessing)" in line
    assert "dataset omniglot/background_small1 has 1-channel images" in line
    assert "its own kind (mini_imagenet)" in line and "trained on 1-channel images" in line
    # on data of its own kind the same checkpoint evaluates
    assert main(["eval", str(ck), "--episodes", "2", "--ways", "2", "--json", "--quiet"]) == 0


def _store(shape: tuple[int, ...], name: str = "toy/test") -> ClassStore:
    return ClassStore(torch.zeros(shape, dtype=torch.uint8), np.array([0, shape[0]]), ["a"], {"name": name})


def test_check_channels_directly() -> None:
    gray = ImageSpec(size=28, channels=1, invert=True)
    check_channels(_store((4, 1, 28, 28)), gray, "checkpoint g")
    check_channels(_store((4, 1, 84, 84)), gray.to_dict(), "checkpoint g")  # size is not its business
    check_channels(_store((4, 3, 28, 28)), None, "checkpoint text")  # no image spec: nothing to compare
    with pytest.raises(ValueError, match=r"^checkpoint g expects 1-channel 28x28 images \(its "
                                         r"preprocessing\), but dataset toy/test has 3-channel images; "
                                         r"evaluate it on data of its own kind, or use a checkpoint "
                                         r"trained on 3-channel images$"):
        check_channels(_store((4, 3, 28, 28)), gray, "checkpoint g")
    with pytest.raises(ValueError, match=r"expects 3-channel 84x84 .* has 1-channel images; evaluate it "
                                         r"on data of its own kind \(mini_imagenet\)"):
        check_channels(_store((4, 1, 84, 84)), ImageSpec(size=84, channels=3).to_dict(), "checkpoint c",
                       trained_on="mini_imagenet")
    with pytest.raises(ValueError, match=r"holds features of shape \[4, 384\], not images"):
        check_channels(_store((4, 384), "banking77/test"), gray, "checkpoint g")


def test_eval_on_the_users_own_folder_applies_the_checkpoints_preprocessing(tmp_path, data_root,
                                                                            capsys):
    """A labelled folder of RGB drawings, black ink on white, of any size: `metashot eval protonet-omniglot
    --dataset folder --split DIR` reads it as `predict` does (grayscale, 28x28, inverted), not as RGB
    84x84."""
    import io
    import json
    import zipfile

    from PIL import Image

    from metashot.cli import main

    z = zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip")
    names = sorted(n for n in z.namelist() if n.endswith(".png"))
    by: dict[str, list[str]] = {}
    for n in names:
        by.setdefault(n.rsplit("/", 1)[0], []).append(n)
    for c, files in list(by.items())[:5]:
        d = tmp_path / "mine" / c.replace("/", "_")
        d.mkdir(parents=True)
        for i, f in enumerate(files[:6]):
            Image.open(io.BytesIO(z.read(f))).convert("RGB").resize((64, 64)).save(d / f"{i}.png")
    rc = main(["eval", "protonet-omniglot", "--dataset", "folder", "--split", str(tmp_path / "mine"),
               "--ways", "5", "--shots", "1", "--queries", "5", "--episodes", "20", "--json", "--quiet"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["acc"] > 80  # chance is 20; the bundled model scores about 98 on Omniglot test
