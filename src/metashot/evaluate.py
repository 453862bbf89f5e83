"""Evaluation protocol: accuracy over fixed, seeded episodes, reported as mean +- 95% confidence interval.

The interval is 1.96 * std / sqrt(n) over the per-episode accuracies, with the population standard deviation
(numpy's default, as in the published ProtoNet/MAML evaluation code). The episodes depend only on the store,
(ways, shots, queries) and the seed, so two algorithms evaluated with the same arguments see identical tasks.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from metashot.algorithms.base import MetaLearner
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore

DEFAULT_EPISODES = 600
OMNIGLOT_EPISODES = 1000  # the ProtoNet paper's Omniglot protocol


def mean_ci95(values: np.ndarray | list[float]) -> tuple[float, float]:
    """(mean, 1.96 * std / sqrt(n)) of ``values``; std is the population standard deviation."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_ci95: no values")
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(v.size))


def episode_accuracies(learner: MetaLearner, store: ClassStore, ways: int, shots: int, queries: int,
                       episodes: int = DEFAULT_EPISODES, seed: int = 1234, meta_batch: int = 16,
                       device: str | torch.device = "cpu", progress: bool = True,
                       cache_features: bool = True) -> np.ndarray:
    """Accuracy of each of ``episodes`` fixed episodes, in [0, 1], float64 [episodes].

    A learner whose backbone has a frozen pretrained trunk (:func:`metashot.nn.pretrained.frozen_trunk`)
    sees every image's trunk features computed once (``cache_features``); the episodes are the same tasks
    either way, since sampling depends only on the store's class sizes and the seed.

    Raises:
        ValueError: ``episodes`` or ``meta_batch`` < 1, or the model's logits hold NaN/Inf.
    """
    if episodes < 1:
        raise ValueError(f"evaluate: episodes must be >= 1, got {episodes}")
    if meta_batch < 1:
        raise ValueError(f"evaluate: meta_batch must be >= 1, got {meta_batch}")
    from metashot.nn.pretrained import feature_store, frozen_trunk

    trunk = frozen_trunk(learner) if cache_features and store.images.dim() == 4 else None
    features_in: Any = contextlib.nullcontext()
    if trunk is not None:
        store = feature_store(trunk, store, device, progress=progress)
        features_in = trunk.on_features()
    # One episode per sampler batch index, so the episodes do not depend on meta_batch.
    sampler = EpisodeSampler(store, ways, shots, queries, seed=seed, tasks_per_batch=1)
    was_training = learner.training
    learner.eval()
    accs = np.empty(episodes)
    ctx = contextlib.nullcontext if learner.adapt_needs_grad else torch.inference_mode
    try:
        with features_in, tqdm(total=episodes, desc="evaluate", unit="ep", disable=not progress,
                               leave=False) as bar:
            for start in range(0, episodes, meta_batch):
                stop = min(start + meta_batch, episodes)
                batches = [sampler.sample(i) for i in range(start, stop)]
                batch = _concat(batches).to(device)
                with ctx():
                    logits = learner.predict_batch(batch)
                if not bool(torch.isfinite(logits).all()):
                    bad = int((~torch.isfinite(logits)).sum())
                    raise ValueError(
                        f"evaluate: the model's logits are not finite ({bad} of {logits.numel()} NaN/Inf in "
                        f"episodes {start}..{stop - 1}); its weights or batch-norm statistics probably hold "
                        f"NaN/Inf (a diverged run), so an accuracy would be meaningless"
                    )
                accs[start:stop] = (logits.argmax(-1) == batch.query_y).double().mean(-1).cpu().numpy()
                bar.update(stop - start)
    finally:
        learner.train(was_training)
    return accs


def evaluate(learner: MetaLearner, store: ClassStore, ways: int = 5, shots: int = 1, queries: int = 15,
             episodes: int = DEFAULT_EPISODES, seed: int = 1234, meta_batch: int = 16,
             device: str | torch.device = "cpu", progress: bool = True,
             cache_features: bool = True) -> dict[str, Any]:
    """Evaluate on fixed seeded episodes. Returns ``acc`` and ``ci95`` in percent plus the protocol."""
    t0 = time.perf_counter()
    accs = episode_accuracies(learner, store, ways, shots, queries, episodes, seed, meta_batch, device,
                              progress, cache_features)
    mean, ci = mean_ci95(accs)
    return {
        "acc": round(100 * mean, 4), "ci95": round(100 * ci, 4), "episodes": episodes, "ways": ways,
        "shots": shots, "queries": queries, "seed": seed, "dataset": store.meta.get("name", "?"),
        "algorithm": learner.algorithm_name, "seconds": round(time.perf_counter() - t0, 2),
    }


def _concat(batches: list) -> Any:
    from metashot.data.episodes import EpisodeBatch

    if len(batches) == 1:
        return batches[0]
    b0 = batches[0]
    return EpisodeBatch(
        torch.cat([b.support_x for b in batches]), torch.cat([b.support_y for b in batches]),
        torch.cat([b.query_x for b in batches]), torch.cat([b.query_y for b in batches]),
        torch.cat([b.classes for b in batches]), b0.ways, b0.shots, b0.queries,
    )
