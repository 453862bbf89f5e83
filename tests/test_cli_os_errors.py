"""Operating-system errors are one line naming the path and the fix, never a traceback (issue 27 item 12):
a full disk (which still writes summary.json), an out_dir that cannot be made, an unreadable config, an
output that cannot be written."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import metashot.checkpoint as ck
from metashot.algorithms.protonet import ProtoNet
from metashot.cli import _message, main
from metashot.config import Config
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore
from metashot.nn.backbones import build_backbone
from metashot.train import Trainer

REPO = Path(__file__).resolve().parents[1]
SINUSOID = str(REPO / "configs" / "maml-sinusoid.yaml")


def _tiny_trainer(out_dir: Path, **train: object) -> Trainer:
    """A 4-step ProtoNet training on 12 random 8x8 classes."""
    torch.manual_seed(0)
    learner = ProtoNet(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4, depth=2))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12 * 6, 1, 8, 8), generator=g, dtype=torch.uint8)
    store = ClassStore(images, np.arange(13) * 6, [f"c{i}" for i in range(12)], {"name": "tiny"})
    cfg = Config.from_dict({"name": "tiny",
                            "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2},
                            "train": {"steps": 4, "lr": 1e-2, "lr_schedule": "constant", "log_every": 2,
                                      "seed": 0, **train}})
    return Trainer(learner, EpisodeSampler(store, 3, 1, 2, seed=0, tasks_per_batch=2), cfg, out_dir=out_dir,
                   progress=False)


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"metashot {command}: error: ")
    return lines[0]


@pytest.mark.parametrize(("code", "words"), [
    (errno.ENOSPC, "disk is full"), (errno.EACCES, "permission"), (errno.EROFS, "read-only"),
    (errno.EISDIR, "folder"), (errno.ENOTDIR, "not a folder")])
def test_os_errors_read_as_the_path_and_the_fix(code: int, words: str) -> None:
    line = _message(OSError(code, "strerror text", "/some/where/file"))
    assert line.startswith("/some/where/file: ") and words in line and "[Errno" not in line


def test_an_out_dir_that_cannot_be_made_is_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["train", SINUSOID, "--quiet", "--set", "train.steps=1",
               "--set", f"train.out_dir={blocker}/run"])
    assert rc == 2
    line = _one_error_line(capsys, "train")
    assert str(blocker) in line and "not a folder" in line


def test_an_unreadable_config_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("name: x\n")
    real = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self == cfg:  # (the tests run as root, who reads any file: an unreadable file is simulated)
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert main(["train", str(cfg), "--quiet"]) == 2
    line = _one_error_line(capsys, "train")
    assert str(cfg) in line and "permission" in line


def test_a_full_disk_stops_training_with_its_summary_written(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while the final checkpoint is written: last/ of step 2 stays intact, summary.json says
    what happened, and the error names the run folder."""
    real = ck.save_file

    def full(state: dict, path: str, *args: object, **kwargs: object) -> None:
        if tr.step >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(state, path, *args, **kwargs)

    monkeypatch.setattr(ck, "save_file", full)
    tr = _tiny_trainer(tmp_path, checkpoint_every=2)
    with pytest.raises(OSError) as e:
        tr.fit()
    assert e.value.errno == errno.ENOSPC and str(tmp_path) in str(e.value.filename)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4 and "No space left" in summary["error"]
    assert ck.read_meta(tmp_path / "last")["step"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1].get("event") == "os_error"
