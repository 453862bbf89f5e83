"""Sinusoid regression (MAML section 5.1): the seeded task sampler and a short meta-training that helps."""

from __future__ import annotations

import math

import pytest
import torch

from metashot.algorithms.maml import MAML
from metashot.data.sinusoid import SinusoidTasks, sinusoid_source
from metashot.nn.backbones import mlp
from metashot.sinusoid_eval import finetune_mse


def test_sampler_is_seeded_and_in_range() -> None:
    s = SinusoidTasks(shots=10, queries=7, tasks_per_batch=25, seed=3)
    a, b = s.sample(5), s.sample(5)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.support_x, s.sample(6).support_x)
    assert a.support_x.shape == (25, 10, 1) and a.query_y.shape == (25, 7, 1)
    assert float(a.amplitude.min()) >= 0.1 and float(a.amplitude.max()) <= 5.0
    assert float(a.phase.min()) >= 0.0 and float(a.phase.max()) <= math.pi
    assert float(a.support_x.abs().max()) <= 5.0
    expect = a.amplitude.view(-1, 1, 1).float() * torch.sin(a.query_x - a.phase.view(-1, 1, 1).float())
    assert torch.allclose(a.query_y, expect, atol=1e-5)
    with pytest.raises(ValueError, match="unknown data.options"):
        sinusoid_source({"amplitudes": [0, 1]}, 10, 10, 25, 0)


@pytest.mark.slow
def test_meta_training_lowers_post_update_loss(one_thread: None) -> None:
    """150 second-order MAML steps (K=10, alpha=0.01, meta-batch 25; Adam 3e-3 instead of 1e-3 to be quick)
    lower the MSE after one fine-tuning step on K=5 points, on fixed held-out tasks."""
    torch.manual_seed(0)
    learner = MAML(mlp(1, (40, 40), 1), inner_lr=0.01, inner_steps=1, loss="mse")
    before = finetune_mse(learner, shots=5, steps=(1,), tasks=100, seed=99)["mse"][1]
    src = SinusoidTasks(10, 10, 25, seed=0)
    opt = torch.optim.Adam(learner.parameters(), lr=3e-3)
    learner.train()
    for i in range(150):
        loss, _ = learner.meta_loss(src.sample(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = finetune_mse(learner, shots=5, steps=(1, 5), tasks=100, seed=99)["mse"]
    assert after[1] < 0.75 * before, (before, after)
    assert after[5] < after[1]  # more fine-tuning steps keep helping


@pytest.mark.slow
def test_sinusoid_cli_train_eval_plot(tmp_path, capsys, one_thread: None) -> None:
    import json
    from pathlib import Path

    from metashot.cli import main

    configs = Path(__file__).resolve().parents[2] / "configs"
    run = tmp_path / "run"
    assert main(["sinusoid", "train", str(configs / "maml-sinusoid.yaml"), "--quiet", "--set",
                 "train.steps=5", "--set", f"train.out_dir={run}", "--set", "train.log_every=5"]) == 0
    capsys.readouterr()
    png = tmp_path / "fig.png"
    assert main(["sinusoid", "eval", str(run), "--baseline", str(run), "--tasks", "20", "--json",
                 "--plot", str(png)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["MAML"]["mse"]) == {"1", "5", "10"} and report["MAML"]["tasks"] == 20
    assert png.stat().st_size > 10_000
    # an image config is refused with a message naming the right command
    assert main(["sinusoid", "train", str(configs / "maml-omniglot-5w1s.yaml"), "--quiet"]) == 2
    assert "needs 'sinusoid'" in capsys.readouterr().err
