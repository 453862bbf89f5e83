"""A short MAML run on real Omniglot learns; its checkpoint works with evaluate, load and fit/predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metashot.checkpoint import build_learner, load_checkpoint, save_checkpoint
from metashot.classifier import load
from metashot.config import Config
from metashot.data.episodes import EpisodeSampler
from metashot.evaluate import evaluate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def trained(omniglot_train, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    torch.manual_seed(0)
    model = {"algorithm": "maml", "backbone": "maml_omniglot",
             "backbone_args": {"in_channels": 1, "hidden": 16, "out_features": 5},
             "algorithm_args": {"inner_lr": 0.4, "inner_steps": 1, "inner_steps_test": 3}}
    learner = build_learner(model)
    sampler = EpisodeSampler(omniglot_train, 5, 1, 2, seed=0, tasks_per_batch=8)
    opt = torch.optim.Adam(learner.parameters(), lr=3e-3)
    learner.train()
    for i in range(60):
        loss, _ = learner.meta_loss(sampler.sample(i).to("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    cfg = Config.from_dict({"name": "maml-test", "model": model, "episodes": {"ways": 5, "shots": 1},
                            "eval": {"ways": 5, "shots": 1, "queries": 5, "episodes": 40}})
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "final", learner, cfg.to_dict(),
                           extra={"image_spec": omniglot_train.meta["image_spec"]}
                           if "image_spec" in omniglot_train.meta else None)
    return path, learner


def test_short_maml_run_learns(trained, omniglot_test) -> None:
    """60 meta-steps of a 16-channel net: 5-way 1-shot accuracy on the test split far above chance (20 %)."""
    path, _ = trained
    learner, _ = load_checkpoint(path)
    res = evaluate(learner, omniglot_test, ways=5, shots=1, queries=5, episodes=40, seed=3, meta_batch=20,
                   progress=False)
    assert res["acc"] > 45.0, res


def test_checkpoint_fit_predict_matches_adapt(trained, omniglot_test) -> None:
    path, _ = trained
    learner, _ = load_checkpoint(path)
    batch = EpisodeSampler(omniglot_test, 5, 1, 3, seed=11).sample(0)
    clf = load(path)
    f = batch.to("cpu")  # float images in [0, 1], the store's preprocessing already applied
    labels = [f"c{int(y)}" for y in f.support_y[0]]
    clf.fit(f.support_x[0], labels)
    pred = clf.predict(f.query_x[0])
    ref = learner.adapt(f.support_x[0], f.support_y[0])(f.query_x[0]).argmax(-1)
    assert list(pred) == [f"c{int(k)}" for k in ref]
    assert np.mean([p == f"c{int(y)}" for p, y in zip(pred, batch.query_y[0], strict=True)]) > 0.3
    # a 3-way support set is a clear error: the head was meta-learned for 5 ways
    with pytest.raises(ValueError, match="outputs 5 logits but the task has 3 classes"):
        clf.fit(f.support_x[0][:3], ["a", "b", "c"])


def test_cli_eval_path_loop_matches_vectorized(trained, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`metashot eval --path loop|vectorized`: the flag picks the path, and both give the same accuracies."""
    import json

    from metashot.algorithms.maml import MAML
    from metashot.cli import main

    seen: list[bool] = []
    original = MAML.predict_batch

    def spy(self: MAML, batch: object) -> torch.Tensor:
        seen.append(self.vectorized)
        return original(self, batch)

    monkeypatch.setattr(MAML, "predict_batch", spy)
    path, _ = trained
    accs = {}
    for p in ("loop", "vectorized"):
        seen.clear()
        assert main(["eval", str(path), "--episodes", "12", "--seed", "5", "--json", "--quiet",
                     "--threads", "1", "--path", p]) == 0
        accs[p] = json.loads(capsys.readouterr().out)["acc"]
        assert seen and set(seen) == {p == "vectorized"}
    assert accs["loop"] == accs["vectorized"], accs
    # a learner without an inner loop refuses the flag
    assert main(["eval", "protonet-omniglot", "--episodes", "2", "--path", "loop"]) == 2
    assert "--path applies to the gradient-based learners" in capsys.readouterr().err


def test_cli_eval_inner_steps(trained, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`metashot eval --inner-steps N` adapts with N steps at test (0: the meta-learned start itself)."""
    import json

    from metashot.algorithms.maml import MAML
    from metashot.cli import main

    seen: list[int] = []
    original = MAML.predict_batch

    def spy(self: MAML, batch: object) -> torch.Tensor:
        seen.append(self.inner_steps_test)
        return original(self, batch)

    monkeypatch.setattr(MAML, "predict_batch", spy)
    path, _ = trained
    accs = {}
    for steps in ("0", "2"):
        seen.clear()
        assert main(["eval", str(path), "--episodes", "12", "--seed", "5", "--json", "--quiet",
                     "--threads", "1", "--inner-steps", steps]) == 0
        accs[steps] = json.loads(capsys.readouterr().out)["acc"]
        assert seen and set(seen) == {int(steps)}
    assert accs["2"] > accs["0"]  # adaptation helps a meta-trained start
    assert main(["eval", str(path), "--episodes", "2", "--inner-steps", "-1"]) == 2
    assert "--inner-steps must be >= 0" in capsys.readouterr().err
    assert main(["eval", "protonet-omniglot", "--episodes", "2", "--inner-steps", "1"]) == 2
    assert "--inner-steps applies to the gradient-based learners" in capsys.readouterr().err
