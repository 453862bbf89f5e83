"""Nothing lost, nothing silent (issue 17, items 1-3): crash-safe checkpoint swaps (a fault-injection hook
"kills" the write at each of its steps), deferred signals, fresh runs that clear the old run, the run folder
lock and torn metrics lines."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import metashot.checkpoint as ck
import metashot.train as mt
from metashot.algorithms.protonet import ProtoNet
from metashot.config import Config
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore
from metashot.nn.backbones import build_backbone
from metashot.runs import RunDir, RunFolderLockedError
from metashot.train import Trainer, train_from_config

STAGES = ("written", "moved_old", "moved_new", "cleaned")


class Killed(BaseException):
    """Stands for the process dying at a fault point."""


def learner(seed: int) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4, depth=2))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return ck.read_weights(folder, ck.read_meta(folder))


def same(a: dict[str, torch.Tensor], b: torch.nn.Module) -> bool:
    return all(torch.equal(a[k], v) for k, v in b.state_dict().items())


def tiny_cfg(**train: object) -> Config:
    base = {"steps": 4, "lr": 1e-2, "lr_schedule": "constant", "log_every": 2, "seed": 0}
    base.update(train)
    return Config.from_dict(
        {"name": "tiny", "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2}, "train": base}
    )


def sampler() -> EpisodeSampler:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12 * 6, 1, 8, 8), generator=g, dtype=torch.uint8)
    store = ClassStore(images, np.arange(13) * 6, [f"c{i}" for i in range(12)], {"name": "tiny"})
    return EpisodeSampler(store, 3, 1, 2, seed=0, tasks_per_batch=2)


def kill_at(monkeypatch: pytest.MonkeyPatch, stage: str, snapshot: Path, run: Path) -> None:
    """At fault point ``stage``: copy the run folder as the disk holds it (what a SIGKILL would leave), then
    abort the write."""

    def fault(at: str) -> None:
        if at == stage:
            shutil.copytree(run, snapshot)
            raise Killed(at)

    monkeypatch.setattr(ck, "_fault_point", fault)


@pytest.mark.parametrize("stage", STAGES)
def test_checkpoint_swap_killed_at_each_step_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    run, snap = tmp_path / "run", tmp_path / "snap"
    old, new, fin = learner(1), learner(2), learner(3)
    ck.save_checkpoint(run / "final", fin, {})
    ck.save_checkpoint(run / "best", old, {})
    kill_at(monkeypatch, stage, snap, run)
    with pytest.raises(Killed):
        ck.save_checkpoint(run / "best", new, {})
    # the process that saw the error still has a complete best/ (the old one, or the new one once in place)
    assert same(weights(run / "best"), new if stage in ("moved_new", "cleaned") else old)
    # a process killed there: `metashot eval RUN` reads best/ (or its complete copy), never final/
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = ck.resolve(snap)
    assert [str(w.message) for w in caught if "interrupted" in str(w.message)] != [] if stage == "moved_old" \
        else caught == []
    assert found.name == "best" or found.name.startswith(".best.")
    assert same(weights(found), new if stage != "written" else old)
    # training (under the run lock) renames it back and removes the leftovers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (at "moved_old": "restored it from the complete copy")
        ck.recover(snap / "best")
    assert same(weights(snap / "best"), new if stage != "written" else old)
    assert not [p.name for p in snap.iterdir() if p.name.startswith(".best.")]
    monkeypatch.setattr(ck, "_fault_point", lambda at: None)
    ck.save_checkpoint(run / "best", new, {})  # leftovers of killed writes are cleaned after a good save
    assert sorted(p.name for p in run.iterdir()) == ["best", "final"]


def test_second_signal_during_the_swap_is_deferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = learner(1), learner(2)
    ck.save_checkpoint(tmp_path / "last", old, {})
    seen: list[bool] = []

    def aborting(signum: int, frame: object) -> None:  # as the Trainer's handler does for a second signal
        seen.append((tmp_path / "last" / ck.CONFIG).is_file())
        raise KeyboardInterrupt("second signal")

    def fault(at: str) -> None:
        if at == "moved_old":
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(ck, "_fault_point", fault)
    before = signal.signal(signal.SIGINT, aborting)
    try:
        with pytest.raises(KeyboardInterrupt):
            ck.save_checkpoint(tmp_path / "last", new, {}, train_state=({"x": torch.ones(2)}, {"step": 3}))
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen == [True]  # delivered after the write, to the handler that was installed
    assert same(weights(tmp_path / "last"), new)
    assert ck.load_train_state(tmp_path / "last")[1]["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_resume_after_a_kill_between_the_renames_of_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, snap = tmp_path / "run", tmp_path / "snap"
    cfg = tiny_cfg(steps=4, checkpoint_every=2)

    def fault(at: str) -> None:  # the second write of last/ (step 4; the first had nothing to move) dies
        if at == "moved_old":  # between its renames
            shutil.copytree(run, snap)
            raise Killed(at)

    monkeypatch.setattr(ck, "_fault_point", fault)
    with pytest.raises(Killed):
        Trainer(learner(0), sampler(), cfg, out_dir=run, progress=False).fit()
    monkeypatch.setattr(ck, "_fault_point", lambda at: None)
    assert not (snap / "last").exists()
    monkeypatch.setattr(mt, "build_trainer", lambda c, progress, out_dir, ctx, **kw: Trainer(
        learner(9), sampler(), c, out_dir=out_dir, progress=False))
    with pytest.warns(UserWarning, match="restored it from the complete copy"):
        out = train_from_config(tiny_cfg(steps=6, checkpoint_every=2), progress=False, resume=snap)
    assert out["steps"] == 6 and ck.read_meta(snap / "last")["step"] == 6
    assert not [p.name for p in snap.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_fresh_run_in_a_used_folder_removes_the_old_runs_checkpoints(tmp_path: Path) -> None:
    cfg = tiny_cfg(steps=2, val_every=2)
    Trainer(learner(0), sampler(), cfg, lambda _: {"acc": 50.0}, out_dir=tmp_path, progress=False).fit()
    assert (tmp_path / "best").is_dir()
    fresh = Trainer(learner(5), sampler(), tiny_cfg(steps=2), out_dir=tmp_path, progress=False)
    with pytest.warns(UserWarning, match=r"removed its best/, final/, last/, summary.json"):
        fresh.fit()
    assert not (tmp_path / "best").exists()
    assert ck.resolve(tmp_path) == tmp_path / "final"  # `metashot eval RUN` evaluates the new run's model
    assert same(weights(tmp_path / "final"), fresh.learner)


HOLD = """
import fcntl, json, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f.fileno(), fcntl.LOCK_EX)
f.write(json.dumps({"pid": os.getpid(), "host": "elsewhere", "command": "metashot train other.yaml"}))
f.flush()
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_a_locked_run_folder_is_refused_naming_the_other_process(tmp_path: Path) -> None:
    from metashot.rl.train import RLConfig, train_rl

    tmp_path.joinpath("metrics.jsonl").write_text('{"step": 2}\n')
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / ".lock")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "locked"
        tr = Trainer(learner(0), sampler(), tiny_cfg(steps=2), out_dir=tmp_path, progress=False)
        with pytest.raises(RunFolderLockedError, match=rf"pid {other.pid} on elsewhere: metashot train"):
            tr.fit()
        assert tr.step == 0 and sorted(p.name for p in tmp_path.iterdir()) == [".lock", "metrics.jsonl"]
        rl = RLConfig.from_dict({"train": {"iterations": 1, "out_dir": str(tmp_path)}})
        with pytest.raises(RunFolderLockedError, match=rf"pid {other.pid}"):
            train_rl(rl, progress=False)
    finally:
        other.communicate("", timeout=10)
    Trainer(learner(0), sampler(), tiny_cfg(steps=2), out_dir=tmp_path, progress=False).fit()  # free again
    assert json.loads((tmp_path / ".lock").read_text())["command"] != "metashot train other.yaml"


def test_torn_last_metrics_line_is_dropped_and_a_corrupt_one_is_named(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.9}\n{"step": 6, "lo')
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropping its unreadable last line 3"):
        RunDir(log.parent).truncate_metrics(4)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [2, 4]
    log.write_text('{"step": 2}\n{"ste\n{"step": 4}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: "):
        RunDir(log.parent).truncate_metrics(4)
