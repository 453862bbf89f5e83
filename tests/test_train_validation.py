"""Validation does not change the training trajectory: a run that validates every 2 steps ends with exactly
the weights (parameters and batch-norm statistics) of the same run without validation.

The learners are chosen so that validation has something to disturb: batch-norm running statistics
(ProtoNet's ResNet-12; validation must run in evaluation mode and restore training mode), the global RNG
(its dropout draws masks from it every training step, so a validation that consumed random numbers would
shift them) and gradients (MAML adapts with autograd inside validation too).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metashot.checkpoint import load_checkpoint
from metashot.config import load_config
from metashot.train import train_from_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STEPS, VAL_EVERY = 6, 2

COMMON = [f"train.steps={STEPS}", "train.log_every=3", "train.checkpoint_every=0", "train.threads=null",
          "train.target_val_acc=null", "train.early_stop_patience=0", "train.val_episodes=3",
          "eval.queries=2", "eval.meta_batch=2"]
CASES = {
    "protonet-resnet12-dropout": ("protonet-omniglot-5w1s-fast.yaml", [
        "model.backbone=resnet12",
        "model.backbone_args={in_channels: 1, widths: [4, 4, 4, 4], drop_rate: 0.2}",
        "episodes.ways=5", "episodes.queries=2", "episodes.meta_batch=2"]),
    "maml-second-order": ("maml-omniglot-5w1s.yaml", [
        "model.backbone_args={in_channels: 1, hidden: 4, out_features: 5}", "episodes.meta_batch=2"]),
}


def _train(name: str, out: Path, val_every: int) -> dict[str, torch.Tensor]:
    """Final weights of the case's run with ``train.val_every = val_every``; checks when it validated."""
    yaml, overrides = CASES[name]
    cfg = load_config(CONFIGS / yaml, [*COMMON, *overrides, f"train.val_every={val_every}",
                                       f"train.out_dir={out}"])
    summary = train_from_config(cfg, progress=False)
    assert summary["steps"] == STEPS
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val_steps = [r["step"] for r in recs if "val_acc" in r]
    assert val_steps == (list(range(VAL_EVERY, STEPS + 1, VAL_EVERY)) if val_every else [])
    learner, _ = load_checkpoint(out / "final")
    return learner.state_dict()


@pytest.mark.slow
@pytest.mark.usefixtures("data_root", "one_thread")
@pytest.mark.parametrize("name", sorted(CASES))
def test_validation_leaves_the_final_weights_unchanged(tmp_path, name):
    plain = _train(name, tmp_path / "no-val", 0)
    validated = _train(name, tmp_path / "val", VAL_EVERY)
    assert plain.keys() == validated.keys()
    assert any("running_mean" in k for k in plain)  # batch-norm statistics are compared too
    for k in plain:
        assert torch.equal(plain[k], validated[k]), f"{name}: {k} differs when validating every {VAL_EVERY}"
