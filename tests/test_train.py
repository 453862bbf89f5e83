"""Trainer: best-checkpoint selection, early stopping, NaN guard, logs, schedules, exact state round trips.

These tests use a small synthetic store (random 8x8 images) and a 2-layer conv ProtoNet so they run in
seconds; the end-to-end SIGTERM/resume test on Omniglot is in test_train_resume.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from metashot.algorithms.protonet import ProtoNet
from metashot.checkpoint import load_train_state, read_meta
from metashot.config import Config
from metashot.data.device import DeviceSampler
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore
from metashot.nn.backbones import build_backbone
from metashot.optim import NonFiniteLossError, lr_factor
from metashot.train import Trainer
from metashot.train_state import optimizer_state_flat, optimizer_state_unflat


def tiny_store(classes: int = 12, per_class: int = 6, seed: int = 0) -> ClassStore:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, 1, 8, 8), generator=g, dtype=torch.uint8)
    return ClassStore(
        images, np.arange(classes + 1) * per_class, [f"c{i}" for i in range(classes)], {"name": "tiny"}
    )


def tiny_learner(seed: int = 0) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4, depth=2))


def tiny_cfg(**train: object) -> Config:
    base = {"steps": 12, "lr": 1e-2, "lr_schedule": "constant", "log_every": 3, "seed": 0}
    base.update(train)
    return Config.from_dict(
        {"name": "tiny", "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2}, "train": base}
    )


def sampler(store: ClassStore | None = None) -> EpisodeSampler:
    return EpisodeSampler(store or tiny_store(), 3, 1, 2, seed=0, tasks_per_batch=2)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_best_checkpoint_is_the_best_validation_and_early_stopping(tmp_path: Path) -> None:
    accs = iter([50.0, 70.0, 60.0, 65.0, 99.0])
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    learner = tiny_learner()
    trainer: Trainer

    def validate(lrn: ProtoNet) -> dict:
        snapshots[trainer.step] = {k: v.clone() for k, v in lrn.state_dict().items()}
        return {"acc": next(accs), "ci95": 1.5}

    cfg = tiny_cfg(steps=20, val_every=2, early_stop_patience=2)
    trainer = Trainer(learner, sampler(), cfg, validate, out_dir=tmp_path, progress=False)
    res = trainer.fit()
    # 50 (step 2), 70 (4), 60 (6), 65 (8): two validations without improvement -> stop at step 8
    assert res["early_stopped_at_step"] == 8 and res["steps"] == 8
    assert res["best_val_acc"] == 70.0 and res["best_step"] == 4
    meta = read_meta(tmp_path / "best")
    assert meta["step"] == 4 and meta["val"]["acc"] == 70.0
    best = load_file(str(tmp_path / "best" / "weights.safetensors"))
    for k, v in snapshots[4].items():
        assert torch.equal(best[k], v), k
    assert not torch.equal(best["backbone.0.0.weight"], snapshots[8]["backbone.0.0.weight"])
    vals = [r for r in records(tmp_path) if "val_acc" in r]
    assert [r["val_acc"] for r in vals] == [50.0, 70.0, 60.0, 65.0]
    assert all(r["val_ci95"] == 1.5 for r in vals)
    assert read_meta(tmp_path / "final")["step"] == 8


def test_target_accuracy_stops(tmp_path: Path) -> None:
    accs = iter([40.0, 81.0, 90.0])
    cfg = tiny_cfg(steps=30, val_every=3, target_val_acc=80.0)
    res = Trainer(
        tiny_learner(), sampler(), cfg, lambda _: {"acc": next(accs)}, out_dir=tmp_path, progress=False
    ).fit()
    assert res["reached_target_at_step"] == 6 and res["steps"] == 6


def test_jsonl_log_fields(tmp_path: Path) -> None:
    cfg = tiny_cfg(steps=7, log_every=3)
    Trainer(tiny_learner(), sampler(), cfg, out_dir=tmp_path, progress=False).fit()
    recs = records(tmp_path)
    assert [r["step"] for r in recs] == [3, 6, 7]  # every log_every steps and the last step
    for r in recs:
        assert {"loss", "acc", "lr", "steps_per_s", "episodes_per_s", "grad_norm", "elapsed_s"} <= set(r)
        assert r["episodes_per_s"] == pytest.approx(2 * r["steps_per_s"])  # meta_batch = 2
        assert 0.0 <= r["acc"] <= 100.0 and math.isfinite(r["loss"])  # percent, like val_acc
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 7
    assert json.loads((tmp_path / "config.yaml").read_text())["train"]["steps"] == 7


class NaNAt(ProtoNet):
    """ProtoNet whose loss is NaN in the forward pass of step ``k`` (1-based; batch k - 1), wherever that
    forward runs (the step itself, or the health check of the checkpoint before it). Set ``trainer``."""

    def __init__(self, backbone: torch.nn.Module, k: int) -> None:
        super().__init__(backbone)
        self.k, self.trainer = k, None

    def meta_loss(self, batch):  # type: ignore[no-untyped-def]
        loss, m = super().meta_loss(batch)
        return self.corrupt(loss, m) if self.trainer.step + 1 == self.k else (loss, m)

    def corrupt(self, loss: torch.Tensor, m: dict) -> tuple[torch.Tensor, dict]:
        m["loss"] = float("nan")
        return loss * float("nan"), m


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    learner = NaNAt(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4, depth=2), k=8)
    cfg = tiny_cfg(steps=20, checkpoint_every=3, val_every=3)
    trainer = Trainer(learner, sampler(), cfg, lambda _: {"acc": 50.0}, out_dir=tmp_path, progress=False)
    learner.trainer = trainer
    before = {}

    orig = trainer.train_step

    def spy() -> dict:
        before[trainer.step] = {k: v.clone() for k, v in learner.state_dict().items()}
        return orig()

    trainer.train_step = spy  # type: ignore[method-assign]
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss \(nan\) at step 8 .*last good checkpoint is "
        r".*last \(step 6\)",
    ):
        trainer.fit()
    assert trainer.step == 7  # the NaN step applied no update
    for k, v in learner.state_dict().items():
        assert torch.isfinite(v.float()).all() and torch.equal(v, before[7][k]), k
    last = load_file(str(tmp_path / "last" / "weights.safetensors"))
    assert read_meta(tmp_path / "last")["step"] == 6
    for k, v in before[6].items():
        assert torch.equal(last[k], v), k
    assert not (tmp_path / "final").exists()
    assert read_meta(tmp_path / "best")["step"] == 3
    assert json.loads((tmp_path / "summary.json").read_text())["diverged_at_step"] == 8
    assert records(tmp_path)[-1]["event"] == "non_finite"


class NaNStatsAt(NaNAt):
    """ProtoNet whose batch-norm running variance becomes NaN on its ``k``-th call; the loss stays finite."""

    def corrupt(self, loss: torch.Tensor, m: dict) -> tuple[torch.Tensor, dict]:
        bn = next(mod for mod in self.modules() if isinstance(mod, torch.nn.BatchNorm2d))
        bn.running_var.data[0] = float("nan")  # .data: not seen by autograd
        return loss, m


def test_nan_guard_catches_non_finite_buffers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    learner = NaNStatsAt(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4, depth=2), k=5)
    cfg = tiny_cfg(steps=12, checkpoint_every=2)
    trainer = Trainer(learner, sampler(), cfg, out_dir=tmp_path, progress=False)
    learner.trainer = trainer
    # The checkpoint of step 4 is not written: its health check runs step 5's forward pass, which fails.
    with pytest.raises(
        NonFiniteLossError,
        match=r"step 5 \(batch 4\) gives a non-finite buffer\(s\) backbone\.0\.1\.running_var.*no update "
        r"was applied.*last good checkpoint is .*last \(step 2\)",
    ):
        trainer.fit()
    assert trainer.step == 4
    assert all(torch.isfinite(v.float()).all() for v in learner.state_dict().values())  # buffers restored
    assert read_meta(tmp_path / "last")["step"] == 2 and not (tmp_path / "final").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diverged_at_step"] == 5 and summary["steps"] == 4
    assert records(tmp_path)[-1]["event"] == "non_finite"


def test_nan_guard_stops_a_run_whose_batch_norm_statistics_overflow(tmp_path: Path) -> None:
    """SGD at a huge rate: the running variance overflows while the loss stays finite."""
    cfg = tiny_cfg(steps=20, optimizer="sgd", momentum=0.0, lr=1e4, checkpoint_every=1)
    trainer = Trainer(tiny_learner(), sampler(), cfg, out_dir=tmp_path, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite (buffer|loss|gradient|parameter|scores)"):
        trainer.fit()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diverged_at_step"] in (trainer.step, trainer.step + 1) and trainer.step < 20
    # (the last good checkpoint is evaluable and resumable: tests/test_reliability2.py)
    assert read_meta(tmp_path / "last")["step"] == summary["steps"] == summary["diverged_at_step"] - 1


def test_nan_guard_catches_an_update_that_overflows_the_weights(tmp_path: Path) -> None:
    cfg = tiny_cfg(steps=5, optimizer="sgd", momentum=0.0, lr=1e38)
    trainer = Trainer(tiny_learner(), sampler(), cfg, out_dir=tmp_path, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite parameter\(s\) backbone\..* update of step 1 "):
        trainer.fit()
    assert trainer.step == 0 and not (tmp_path / "final").exists() and not (tmp_path / "last").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["diverged_at_step"] == 1


def test_save_refuses_non_finite_weights(tmp_path: Path) -> None:
    learner = tiny_learner()
    trainer = Trainer(learner, sampler(), tiny_cfg(), out_dir=tmp_path, progress=False)
    trainer.save("last", with_state=True)
    good = (tmp_path / "last" / "weights.safetensors").read_bytes()
    with torch.no_grad():
        next(learner.parameters())[0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="refusing to write checkpoint"):
        trainer.save("last", with_state=True)
    assert (tmp_path / "last" / "weights.safetensors").read_bytes() == good


def test_grad_clip_bounds_the_update() -> None:
    cfg = tiny_cfg(steps=1, grad_clip=1e-3, lr=1.0, optimizer="sgd")
    learner = tiny_learner()
    w0 = [p.detach().clone() for p in learner.parameters()]
    tr = Trainer(learner, sampler(), cfg, out_dir=None, progress=False)
    m = tr.train_step()
    assert m["grad_norm"] > 1e-3  # the unclipped norm is logged
    delta = torch.cat([(p.detach() - w).flatten() for p, w in zip(learner.parameters(), w0, strict=True)])
    assert float(delta.norm()) == pytest.approx(
        1e-3, rel=1e-3
    )  # SGD step lr * clipped grad (momentum 0 at step 1)


def test_sgd_momentum_setting() -> None:
    """train.momentum reaches SGD (0: plain SGD, the Reptile interpolation step); the default stays 0.9;
    two plain-SGD steps move the weights by lr * (g1 + g2), not by the momentum-accumulated amount."""
    from metashot.optim import make_optimizer

    p = [torch.nn.Parameter(torch.zeros(3))]
    assert make_optimizer(p, tiny_cfg(optimizer="sgd")).param_groups[0]["momentum"] == 0.9
    opt = make_optimizer(p, tiny_cfg(optimizer="sgd", momentum=0.0, lr=0.5))
    g = torch.tensor([1.0, -2.0, 4.0])
    for _ in range(2):
        opt.zero_grad()
        p[0].grad = g.clone()
        opt.step()
    assert torch.equal(p[0].detach(), -0.5 * 2 * g)
    with pytest.raises(ValueError, match="momentum"):
        make_optimizer(p, tiny_cfg(optimizer="sgd", momentum=1.0))


def test_lr_schedules_closed_form() -> None:
    f = lr_factor(tiny_cfg(lr_schedule="step", lr_step=5, lr_gamma=0.5))
    assert [f(s) for s in (0, 4, 5, 10, 14)] == [1.0, 1.0, 0.5, 0.25, 0.25]
    f = lr_factor(tiny_cfg(lr_schedule="cosine", steps=100, lr=1e-2, lr_min=1e-3))
    assert f(0) == pytest.approx(1.0) and f(50) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(tiny_cfg(lr_schedule="linear"))


def test_optimizer_state_round_trip_is_exact() -> None:
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.Adam([p], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (p**3).sum().backward()
        opt.step()
    tensors, meta = optimizer_state_flat(opt)
    meta = json.loads(json.dumps(meta))  # must survive JSON
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.Adam([q], lr=0.5)
    optimizer_state_unflat(opt2, tensors, meta)
    for o, par in ((opt, p), (opt2, q)):
        o.zero_grad()
        (par**3).sum().backward()
        o.step()
    assert torch.equal(p, q)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999)


def test_in_process_interrupt_and_resume_is_exact(tmp_path: Path) -> None:
    cfg = tiny_cfg(steps=10, lr_schedule="cosine", checkpoint_every=4, val_every=5)
    Trainer(
        tiny_learner(), sampler(), cfg, lambda _: {"acc": 1.0}, out_dir=tmp_path / "a", progress=False
    ).fit()
    cut = Trainer(
        tiny_learner(), sampler(), cfg, lambda _: {"acc": 1.0}, out_dir=tmp_path / "b", progress=False
    )
    orig = cut.train_step

    def signalled_at_6() -> dict:
        m = orig()
        if cut.step == 6:
            cut._signal = 15  # what the SIGTERM handler records
            cut._stop_all = True
        return m

    cut.train_step = signalled_at_6  # type: ignore[method-assign]
    out = cut.fit()
    assert out["interrupted_at_step"] == 6 and out["signal"] == 15
    assert read_meta(tmp_path / "b" / "last")["step"] == 6 and not (tmp_path / "b" / "final").exists()
    res = Trainer(
        tiny_learner(seed=9), sampler(), cfg, lambda _: {"acc": 1.0}, out_dir=tmp_path / "b", progress=False
    )
    res.load_state(tmp_path / "b" / "last")
    assert res.step == 6
    res.fit()
    a = load_file(str(tmp_path / "a" / "final" / "weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ta, ma = load_train_state(tmp_path / "a" / "last")
    tb, mb = load_train_state(tmp_path / "b" / "last")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta if k.startswith("optim."))
    assert ma["scheduler"]["last_epoch"] == mb["scheduler"]["last_epoch"] == 10
    strip = ("steps_per_s", "episodes_per_s", "elapsed_s")
    ra = [{k: v for k, v in r.items() if k not in strip} for r in records(tmp_path / "a")]
    rb = [{k: v for k, v in r.items() if k not in strip} for r in records(tmp_path / "b")]
    assert ra == rb  # the log of the resumed run reads like the uninterrupted one


def test_train_state_tamper_is_caught(tmp_path: Path) -> None:
    tr = Trainer(tiny_learner(), sampler(), tiny_cfg(), out_dir=tmp_path, progress=False)
    tr.train_step()
    tr.save("last", with_state=True)
    f = tmp_path / "last" / "train_state.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(ValueError, match="SHA-256"):
        tr.load_state(tmp_path / "last")


def test_device_sampler_gives_the_same_episodes() -> None:
    s = sampler()
    d = DeviceSampler(s, "cpu")
    for i in (0, 7):
        for tasks in (None, slice(1, 2)):
            a, b = s.sample(i, tasks=tasks), d.sample(i, tasks=tasks)
            for x, y in (
                (a.support_x, b.support_x),
                (a.query_x, b.query_x),
                (a.support_y, b.support_y),
                (a.query_y, b.query_y),
            ):
                assert torch.equal(x, y)


def test_bf16_autocast_runs_on_cpu(tmp_path: Path) -> None:
    tr = Trainer(tiny_learner(), sampler(), tiny_cfg(precision="bf16"), out_dir=tmp_path, progress=False)
    m = tr.train_step()
    assert math.isfinite(m["loss"])
    assert all(p.dtype == torch.float32 for p in tr.learner.parameters())
    with pytest.raises(ValueError, match="precision"):
        Trainer(tiny_learner(), sampler(), tiny_cfg(precision="fp8"), out_dir=tmp_path, progress=False)


def test_tensorboard_opt_in(tmp_path: Path) -> None:
    cfg = tiny_cfg(steps=3, tensorboard=True)
    tr = Trainer(tiny_learner(), sampler(), cfg, out_dir=tmp_path, progress=False)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            tr.fit()
        return
    tr.fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_with_a_new_learning_rate(tmp_path: Path) -> None:
    cfg = tiny_cfg(steps=6, lr=1e-2, lr_schedule="step", lr_step=4, lr_gamma=0.5, checkpoint_every=5)
    Trainer(tiny_learner(), sampler(), cfg, out_dir=tmp_path, progress=False).fit()
    lower = tiny_cfg(steps=8, lr=1e-3, lr_schedule="step", lr_step=4, lr_gamma=0.5)
    tr = Trainer(tiny_learner(), sampler(), lower, out_dir=tmp_path, progress=False)
    tr.load_state(tmp_path / "last")
    assert tr.step == 6 and tr.opt.param_groups[0]["lr"] == pytest.approx(5e-4)  # 1e-3 * 0.5 ** (6 // 4)
    tr.train_step()
    tr.train_step()
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)  # step 8: 1e-3 * 0.5 ** 2


def test_fresh_run_in_a_used_folder_starts_a_new_log(tmp_path: Path) -> None:
    Trainer(tiny_learner(), sampler(), tiny_cfg(steps=6), out_dir=tmp_path, progress=False).fit()
    Trainer(tiny_learner(), sampler(), tiny_cfg(steps=3), out_dir=tmp_path, progress=False).fit()
    assert [r["step"] for r in records(tmp_path)] == [3]


def test_cli_train_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metashot.cli import main

    assert main(["train"]) == 2
    assert "give a CONFIG file, or --resume RUN_DIR" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "config.yaml is missing" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text(json.dumps(tiny_cfg().to_dict()))
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no last/ checkpoint there" in capsys.readouterr().err


def test_build_trainer_passes_the_episode_group_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import metashot.data.sources as sources
    import metashot.train as train_mod

    names = [f"g{i // 4}/c{i}" for i in range(12)]  # 3 groups of 4 classes
    store = tiny_store()
    store = ClassStore(store.images, store.offsets, names, {"name": "tiny-groups"})
    monkeypatch.setattr(sources, "load_split", lambda *a, **k: store)
    cfg = Config.from_dict({"name": "groups", "model": {"algorithm": "protonet", "backbone": "conv4",
                                                        "backbone_args": {"in_channels": 1, "hidden": 4,
                                                                          "out_channels": 4, "depth": 2}},
                            "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 8,
                                         "within_group": 1.0},
                            "train": {"steps": 1, "val_every": 0}})
    trainer = train_mod.build_trainer(cfg, progress=False)
    classes = trainer.source.sample(0).classes.numpy()
    assert ((classes // 4) == (classes[:, :1] // 4)).all(), "episodes.within_group did not reach the sampler"
