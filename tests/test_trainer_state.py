"""Issue 30: the Trainer owns its state (``state_dict`` / ``load_state_dict``), and a run of a learner with
nothing to train (a frozen pretrained backbone with a parameter-free head) is a Trainer run with nothing to
step, not a second code path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metashot.algorithms.protonet import ProtoNet
from metashot.config import Config
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore
from metashot.nn.backbones import build_backbone
from metashot.train_state import read_train_state, state_files
from metashot.trainer import Trainer


def _learner(seed: int) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4, depth=2))


def _cfg(**train: object) -> Config:
    base = {"steps": 6, "lr": 1e-2, "lr_schedule": "cosine", "log_every": 4, "seed": 0, **train}
    episodes = {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2}
    return Config.from_dict({"name": "tiny", "episodes": episodes, "train": base})


def _sampler() -> EpisodeSampler:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12 * 6, 1, 8, 8), generator=g, dtype=torch.uint8)
    store = ClassStore(images, np.arange(13) * 6, [f"c{i}" for i in range(12)], {"name": "tiny"})
    return EpisodeSampler(store, 3, 1, 2, seed=0, tasks_per_batch=2)


def test_state_dict_round_trip_continues_exactly(tmp_path: Path) -> None:
    cfg = _cfg()
    whole = Trainer(_learner(0), _sampler(), cfg, out_dir=tmp_path / "a", progress=False)
    for _ in range(6):
        whole.train_step()

    first = Trainer(_learner(0), _sampler(), cfg, out_dir=tmp_path / "b", progress=False)
    for _ in range(3):
        first.train_step()
    first.best_acc, first.best_step, first.stale = 42.0, 2, 1
    state = first.state_dict()
    weights = {k: v.clone() for k, v in first.learner.state_dict().items()}
    for _ in range(2):  # moves the RNG, optimizer and schedule on: load_state_dict must bring them back
        first.train_step()

    second = Trainer(_learner(7), _sampler(), cfg, out_dir=tmp_path / "c", progress=False)
    second.learner.load_state_dict(weights)
    second.load_state_dict(state)
    assert (second.step, second.best_acc, second.best_step, second.stale) == (3, 42.0, 2, 1)
    assert second.sched.last_epoch == 3
    for _ in range(3):
        second.train_step()
    for a, b in zip(whole.learner.parameters(), second.learner.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_dict_survives_the_files(tmp_path: Path) -> None:
    from metashot.checkpoint import save_train_state

    tr = Trainer(_learner(0), _sampler(), _cfg(), out_dir=tmp_path / "run", progress=False)
    tr.train_step()
    state = tr.state_dict()
    assert state["best_acc"] is None and tr.best_acc == -math.inf
    save_train_state(tmp_path, *state_files(state))
    (tmp_path / "config.json").write_text("{}")
    back = read_train_state(tmp_path)
    assert back["step"] == 1 and back["scheduler"] == json.loads(json.dumps(state["scheduler"]))
    for k, v in state["optimizer"][0].items():
        assert torch.equal(back["optimizer"][0][k], v)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_frozen_run_goes_through_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from safetensors.torch import save_file

    import metashot.trainer as trainer_mod
    from metashot.train import train_from_config

    monkeypatch.setenv("METASHOT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_efficientnet").state_dict().items()},
              str(weights))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(3):
            d = tmp_path / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    cfg = Config.from_dict({
        "name": "frozen", "data": {"dataset": "folder", "root": str(tmp_path), "train_split": "train",
                                   "val_split": "val", "test_split": "val"},
        "model": {"algorithm": "protonet", "backbone": "timm",
                  "backbone_args": {"model": "test_efficientnet", "pretrained": str(weights), "centre": True,
                                    "l2norm": True}},
        "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 1},
        "train": {"steps": 50, "seed": 0, "val_every": 0, "val_episodes": 4,
                  "out_dir": str(tmp_path / "run")},
        "eval": {"ways": 3, "shots": 1, "queries": 2, "episodes": 4, "seed": 1, "meta_batch": 2}})
    fits = []
    real_fit = trainer_mod.Trainer.fit
    monkeypatch.setattr(trainer_mod.Trainer, "fit", lambda self: fits.append(self) or real_fit(self))
    out = train_from_config(cfg, progress=False)
    assert len(fits) == 1 and fits[0].opt is None and fits[0].total_steps == 0
    assert out["steps"] == 0 and out["fitted"] == "statistics" and out["train_images"] == 9
    assert out["best_step"] == 0 and 0 <= out["best_val_acc"] <= 100  # validated once, at step 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "best", "config.yaml", "final", "metrics.jsonl", "summary.json"]
    [rec] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rec["step"] == 0 and rec["val_acc"] == out["best_val_acc"]
    meta = json.loads((run / "final" / "config.json").read_text())
    assert meta["step"] == 0 and meta["image_spec"]["size"] > 0
    centre = fits[0].learner.backbone.centre
    assert centre is not None and float(centre.abs().sum()) > 0  # the statistics were fitted
