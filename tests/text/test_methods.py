"""Methods on text: training-free baselines and short episodic runs above chance (the adapter backbone's own
tests are in tests/nn/test_backbones.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metashot.algorithms.logreg import LogisticRegression
from metashot.algorithms.ncm import NearestClassMean
from metashot.algorithms.protonet import ProtoNet
from metashot.data import EpisodeSampler
from metashot.data import text as T
from metashot.data.store import ClassStore
from metashot.evaluate import evaluate
from metashot.text.encoder import get_encoder


def _small_store(pairs: list[tuple[str, str]], encoder, per_class: int, classes: int) -> ClassStore:
    texts, names, counts = T.group_by_label(pairs)
    keep_names = names[:classes]
    rows, kept_counts, start = [], [], 0
    for n, c in zip(names, counts, strict=True):
        if n in keep_names:
            rows += texts[start : start + per_class]
            kept_counts.append(min(c, per_class))
        start += c
    z = torch.from_numpy(encoder.encode(rows))
    return ClassStore(z, np.concatenate([[0], np.cumsum(kept_counts)]), keep_names, {"name": "small"})


def test_baselines_agree_on_separable_data() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    sx = centers.repeat_interleave(3, 0) + 0.05 * torch.randn(12, 16, generator=g)
    sy = torch.arange(4).repeat_interleave(3)
    qx = centers + 0.05 * torch.randn(4, 16, generator=g)
    for learner in (NearestClassMean(), LogisticRegression(l2=0.1, steps=30)):
        assert learner.adapt(sx, sy)(qx).argmax(1).tolist() == [0, 1, 2, 3]
    # NCM's logits are the scaled cosine to the class means
    ncm = NearestClassMean(temperature=2.0).adapt(sx, sy)(qx)
    means = torch.nn.functional.normalize(sx.view(4, 3, 16).mean(1), dim=1)
    torch.testing.assert_close(ncm, 2.0 * torch.nn.functional.normalize(qx, dim=1) @ means.T)


def test_logreg_batched_equals_per_task(tmp_path: Path, hashing) -> None:
    pairs = [(f"{w} request number {i}", w) for w in ("alarm", "music", "taxi", "weather", "email", "lights")
             for i in range(6)]
    store = _small_store(pairs, hashing, 6, 6)
    batch = EpisodeSampler(store, 5, 2, 3, seed=1, tasks_per_batch=2).sample(0)
    lr = LogisticRegression(l2=0.1, steps=100).eval()
    batched = lr.predict_batch(batch)
    for t in range(2):
        sx, sy, qx, _ = batch.task(t)
        torch.testing.assert_close(lr.adapt(sx, sy)(qx), batched[t], atol=2e-3, rtol=2e-3)


@pytest.mark.slow
def test_episodic_run_above_chance_with_minilm(text_data_root: Path, minilm) -> None:
    """5-way 1-shot on 10 BANKING77 test intents x 6 sentences, real encoder: far above 20 % chance."""
    store = _small_store(T.read_part("banking77", "test", text_data_root), minilm, per_class=6, classes=10)
    res = evaluate(NearestClassMean(), store, 5, 1, 5, episodes=50, seed=0, progress=False)
    assert res["acc"] > 60, res
    res_lr = evaluate(LogisticRegression(steps=30), store, 5, 1, 5, episodes=10, seed=0, progress=False)
    assert res_lr["acc"] > 60, res_lr


@pytest.mark.slow
def test_protonet_adapter_trains_on_text(text_data_root: Path, tmp_path: Path, text_cache: Path) -> None:
    """A few meta-training steps of ProtoNet + adapter on cached (hashing-bow) BANKING77 embeddings through
    the shared Trainer; the query loss goes down and the checkpoint remembers the text dataset."""
    from metashot.checkpoint import load_checkpoint
    from metashot.config import Config
    from metashot.train import train_from_config

    cfg = Config.from_dict({
        "name": "t", "data": {"dataset": "banking77", "root": str(text_data_root),
                              "options": {"fold": 1, "encoder": "hashing-bow", "cache_dir": str(text_cache)}},
        "model": {"algorithm": "protonet", "backbone": "adapter", "backbone_args": {"dim": 384, "hidden": 32},
                  "algorithm_args": {"distance": "cosine"}},
        "episodes": {"ways": 5, "shots": 1, "queries": 5, "meta_batch": 8},
        "train": {"steps": 20, "lr": 0.01, "lr_schedule": "constant", "log_every": 10, "val_every": 0,
                  "out_dir": str(tmp_path / "run")},
    })
    summary = train_from_config(cfg, progress=False)
    assert summary["steps"] == 20
    learner, meta = load_checkpoint(tmp_path / "run" / "final")
    assert isinstance(learner, ProtoNet) and meta["config"]["data"]["dataset"] == "banking77"
    test = T.text_split("banking77", "test", text_data_root, 1, encoder=get_encoder("hashing-bow"),
                        cache_dir=text_cache)
    assert evaluate(learner, test, 5, 1, 5, episodes=50, seed=0, progress=False)["acc"] > 40
