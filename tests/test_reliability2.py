"""The second reliability pass (issue 27): each test fails without its fix.

Items 1, 2, 7, 10, 11 and 12 have their tests beside the modules they fixed; the others are here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm  # the vision extra is part of the CI install: a missing timm must fail, not skip
import torch
from safetensors.torch import save_file

from metashot.checkpoint import CheckpointError, build_learner, load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- item 14: a checkpoint may name only files inside its own folder or the package's weights -------------

def _tiny_weights(path: Path) -> Path:
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model("test_efficientnet").state_dict().items()}
    save_file(state, str(path))
    return path


def _frozen_timm_checkpoint(tmp_path: Path) -> Path:
    weights = _tiny_weights(tmp_path / "tiny.safetensors")
    model = {"algorithm": "protonet", "backbone": "timm", "algorithm_args": {},
             "backbone_args": {"model": "test_efficientnet", "pretrained": str(weights)}}
    ck = save_checkpoint(tmp_path / "ck", build_learner(model), {"model": model})
    weights.unlink()  # the checkpoint holds its own copy of the frozen trunk's weights file
    return ck


def _set_pretrained(ck: Path, value: str) -> None:
    meta = json.loads((ck / "config.json").read_text())
    meta["config"]["model"]["backbone_args"]["pretrained"] = value
    (ck / "config.json").write_text(json.dumps(meta))


def test_a_checkpoint_carries_its_frozen_trunks_weights_file(tmp_path):
    ck = _frozen_timm_checkpoint(tmp_path)
    meta = json.loads((ck / "config.json").read_text())
    assert meta["config"]["model"]["backbone_args"]["pretrained"] == "pretrained.safetensors"
    assert (ck / "pretrained.safetensors").is_file()
    learner, _ = load_checkpoint(ck)  # the source file is gone: the copy inside the folder is read
    assert learner.backbone.weights_digest == meta["external_weights"]["backbone"]


@pytest.mark.parametrize("target", ["../../../../../../../../etc/hostname", "/proc/self/environ",
                                    "/etc/passwd", "link"])
def test_a_checkpoint_may_not_open_files_outside_its_folder(tmp_path, monkeypatch, target):
    ck = _frozen_timm_checkpoint(tmp_path)
    if target == "link":  # a symbolic link inside the folder that points out of it
        (ck / "link").symlink_to("/etc/passwd")
    _set_pretrained(ck, target)
    opened: list[str] = []
    real_create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: opened.append(str(k)) or real_create(*a, **k))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    msg = str(e.value)
    assert "outside the checkpoint's folder" in msg and str(ck) in msg and "\n" not in msg
    assert not opened  # refused before any model (or file) is built


def test_a_trainable_trunk_needs_no_file_at_all(tmp_path):
    weights = _tiny_weights(tmp_path / "tiny.safetensors")
    model = {"algorithm": "protonet", "backbone": "timm", "algorithm_args": {},
             "backbone_args": {"model": "test_efficientnet", "pretrained": str(weights), "trainable": True}}
    learner = build_learner(model)
    ck = save_checkpoint(tmp_path / "ck", learner, {"model": model})
    assert not (ck / "pretrained.safetensors").exists()  # its weights are in weights.safetensors
    _set_pretrained(ck, "/etc/passwd")
    back, _ = load_checkpoint(ck)
    for k, v in learner.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


@pytest.mark.parametrize("kind", ["passwd", "text", "pickle"])
def test_a_file_that_is_not_weights_is_one_line_without_unsafe_advice(tmp_path, kind):
    from metashot.nn.pretrained import TimmBackbone

    file = tmp_path / "w.pth"
    if kind == "passwd":
        file.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif kind == "text":
        file.write_text("hello\n")
    else:
        torch.save({"conv_stem.weight": torch.zeros(1), "x": Path("/")}, file)  # a non-tensor object
    with pytest.raises(ValueError) as e:
        TimmBackbone("test_efficientnet", pretrained=str(file))
    msg = str(e.value)
    assert str(file) in msg and "not a weights file" in msg and "\n" not in msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
