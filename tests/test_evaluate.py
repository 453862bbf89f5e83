import math

import numpy as np
import pytest
import torch

from metashot.algorithms.base import MetaLearner
from metashot.data.store import ClassStore
from metashot.evaluate import episode_accuracies, evaluate, mean_ci95


def test_ci_formula_matches_hand_computation():
    v = [1.0, 0.0, 1.0, 1.0]
    mean, ci = mean_ci95(v)
    std = math.sqrt(sum((x - 0.75) ** 2 for x in v) / 4)  # population std, numpy's default
    assert mean == pytest.approx(0.75)
    assert ci == pytest.approx(1.96 * std / 2)


def test_ci_of_constant_values_is_zero_and_empty_is_error():
    assert mean_ci95([0.5] * 10) == (0.5, 0.0)
    with pytest.raises(ValueError):
        mean_ci95([])


class _Oracle(MetaLearner):
    """Classifies a query by exact pixel match with its class's support mean (a perfect learner here)."""

    def adapt(self, sx, sy):
        n = int(sy.max()) + 1
        means = torch.stack([sx[sy == k].flatten(1).mean(0) for k in range(n)])

        def pred(qx):
            return -torch.cdist(qx.flatten(1), means)

        return pred


class _Chance(MetaLearner):
    def adapt(self, sx, sy):
        n = int(sy.max()) + 1
        return lambda qx: torch.zeros(len(qx), n)


def _toy_store(classes=10, per=6):
    # every image of class c is the constant c*20: a perfect learner gets 100%
    imgs = torch.arange(classes).repeat_interleave(per).mul(20).to(torch.uint8)
    imgs = imgs[:, None, None, None].expand(-1, 1, 4, 4).contiguous()
    names = [f"c{i}" for i in range(classes)]
    return ClassStore(imgs, np.arange(0, classes * per + 1, per), names,
                      {"name": "toy"})


def test_evaluate_perfect_and_chance_learners():
    store = _toy_store()
    res = evaluate(_Oracle(), store, ways=5, shots=1, queries=3, episodes=40, seed=3, progress=False)
    assert res["acc"] == 100.0 and res["ci95"] == 0.0 and res["episodes"] == 40
    res = evaluate(_Chance(), store, ways=5, shots=1, queries=3, episodes=40, seed=3, progress=False)
    assert res["acc"] == 20.0  # argmax of ties picks label 0: exactly 1/5 of queries


def test_episodes_do_not_depend_on_meta_batch():
    store = _toy_store()

    class Recorder(_Chance):
        seen: list = []

        def adapt(self, sx, sy):
            Recorder.seen.append(sx.clone())
            return super().adapt(sx, sy)

    episode_accuracies(Recorder(), store, 5, 1, 2, episodes=10, seed=5, meta_batch=3, progress=False)
    a = torch.stack(Recorder.seen)
    Recorder.seen = []
    episode_accuracies(Recorder(), store, 5, 1, 2, episodes=10, seed=5, meta_batch=7, progress=False)
    assert torch.equal(a, torch.stack(Recorder.seen))


def test_non_finite_logits_are_an_error_not_chance_accuracy():
    class NaNModel(_Chance):
        def adapt(self, sx, sy):
            n = int(sy.max()) + 1
            return lambda qx: torch.full((len(qx), n), float("nan"))

    with pytest.raises(ValueError, match=r"logits are not finite \(\d+ of \d+ NaN/Inf in episodes 0\.\.3\)"):
        evaluate(NaNModel(), _toy_store(), ways=5, shots=1, queries=2, episodes=10, meta_batch=4,
                 progress=False)


def test_nan_batch_norm_statistics_fail_evaluation():
    from metashot.algorithms.protonet import ProtoNet
    from metashot.nn.backbones import build_backbone

    learner = ProtoNet(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4, depth=2))
    next(m for m in learner.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("nan"))
    with pytest.raises(ValueError, match="logits are not finite"):
        evaluate(learner, _toy_store(), ways=5, shots=1, queries=2, episodes=4, progress=False)


@pytest.mark.parametrize("kwargs", [{"meta_batch": 0}, {"meta_batch": -3}, {"episodes": 0}])
def test_meta_batch_and_episodes_below_one_are_errors(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name} must be >= 1, got {kwargs[name]}"):
        episode_accuracies(_Oracle(), _toy_store(), 5, 1, 2, **{"episodes": 10, **kwargs}, progress=False)


def test_eval_settings_are_those_the_learner_declares():
    from metashot.algorithms.maml import MAML
    from metashot.algorithms.protonet import ProtoNet
    from metashot.evaluate import OverrideError, apply_eval_settings
    from metashot.nn.backbones import build_backbone, mlp

    maml = MAML(mlp(1, (8,), 1), inner_lr=0.01, inner_steps=1, loss="mse")
    assert apply_eval_settings(maml, vectorized=False, inner_steps_test=3, inner_lr=0.5) is maml
    assert (maml.vectorized, maml.inner_steps_test, maml.inner_lr) == (False, 3, 0.5)
    assert apply_eval_settings(maml, inner_steps_test=0).inner_steps_test == 0  # the meta-learned start
    with pytest.raises(OverrideError, match=r"'inner_steps_test' must be >= 0, got -1") as e:
        apply_eval_settings(maml, inner_steps_test=-1)
    assert (e.value.name, e.value.reason) == ("inner_steps_test", "must be >= 0, got -1")
    with pytest.raises(OverrideError, match=r"'inner_steps' is not one evaluation may change"):
        apply_eval_settings(maml, inner_steps=2)  # a training setting: changing it would change the weights
    proto = ProtoNet(build_backbone("conv4", in_channels=1, hidden=4, out_channels=4, depth=2))
    with pytest.raises(OverrideError, match=r"'vectorized' applies to the gradient-based learners.*"
                                            r"ProtoNet \(protonet\) has no inner loop to vectorise"):
        apply_eval_settings(proto, vectorized=True)
    assert apply_eval_settings(proto) is proto  # nothing to set: nothing asked of the learner


def test_evaluate_checkpoint_uses_the_checkpoints_config_unless_told(tmp_path):
    from PIL import Image

    from metashot.checkpoint import build_learner, save_checkpoint
    from metashot.config import Config
    from metashot.evaluate import OverrideError, evaluate_checkpoint

    root = tmp_path / "mine"
    for c in range(4):  # a user's folder of 4 classes of constant images: ProtoNet on pixels is exact
        (root / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 60 * c, np.uint8)).save(root / f"c{c}" / f"{i}.png")
    cfg = Config.from_dict({"model": {"backbone": "conv4", "backbone_args": {"in_channels": 1, "hidden": 4,
                                                                              "out_channels": 4, "depth": 1}},
                            "data": {"dataset": "folder", "test_split": str(root)},
                            "eval": {"ways": 3, "shots": 1, "queries": 2, "episodes": 5, "seed": 1}})
    torch.manual_seed(0)
    spec = {"size": 8, "channels": 1, "invert": False}
    ck = save_checkpoint(tmp_path / "ck", build_learner(dict(cfg.model.__dict__)), cfg.to_dict(),
                         extra={"image_spec": spec})
    res = evaluate_checkpoint(ck, progress=False)
    assert (res["ways"], res["shots"], res["episodes"], res["seed"]) == (3, 1, 5, 1)
    assert res["checkpoint"] == str(ck) and 0.0 <= res["acc"] <= 100.0
    again = evaluate_checkpoint(ck, ways=2, episodes=4, seed=0, progress=False)
    assert (again["ways"], again["episodes"], again["seed"]) == (2, 4, 0)
    with pytest.raises(OverrideError, match="ProtoNet"):
        evaluate_checkpoint(ck, progress=False, inner_steps_test=1)
