"""Evaluation protocol: accuracy over fixed, seeded episodes, reported as mean +- 95% confidence interval.

The interval is 1.96 * std / sqrt(n) over the per-episode accuracies, with the population standard deviation
(numpy's default, as in the published ProtoNet/MAML evaluation code). The episodes depend only on the store,
(ways, shots, queries) and the seed, so two algorithms evaluated with the same arguments see identical tasks.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from metashot.algorithms.base import MetaLearner
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore
from metashot.eval_settings import EVAL_SETTINGS

DEFAULT_EPISODES = 600


def mean_ci95(values: np.ndarray | list[float]) -> tuple[float, float]:
    """(mean, 1.96 * std / sqrt(n)) of ``values``; std is the population standard deviation."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_ci95: no values")
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(v.size))


def episode_accuracies(learner: MetaLearner, store: ClassStore, ways: int, shots: int, queries: int,
                       episodes: int = DEFAULT_EPISODES, seed: int = 1234, meta_batch: int = 16,
                       device: str | torch.device = "cpu", progress: bool = True,
                       cache_features: bool = True, imbalance: float | None = None) -> np.ndarray:
    """Accuracy of each of ``episodes`` fixed episodes, in [0, 1], float64 [episodes].

    ``imbalance``: None for ``queries`` queries per class, or a Dirichlet alpha: the realistic protocol
    (class proportions of each episode's queries drawn from Dirichlet(alpha); see
    :class:`~metashot.data.episodes.EpisodeSampler`). A transductive learner sees each episode's query set
    as its unlabelled batch, in the batched path as in the per-task one.

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
    sampler = EpisodeSampler(store, ways, shots, queries, seed=seed, tasks_per_batch=1, imbalance=imbalance)
    was_training = learner.training
    learner.eval()
    accs = np.empty(episodes)
    try:
        with features_in, tqdm(total=episodes, desc="evaluate", unit="ep", disable=not progress,
                               leave=False) as bar:
            for start in range(0, episodes, meta_batch):
                stop = min(start + meta_batch, episodes)
                batches = [sampler.sample(i) for i in range(start, stop)]
                batch = _concat(batches).to(device)
                with learner.adapt_mode():
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
             cache_features: bool = True, imbalance: float | None = None) -> dict[str, Any]:
    """Evaluate on fixed seeded episodes. Returns ``acc`` and ``ci95`` in percent plus the protocol
    (``imbalance``: the Dirichlet alpha of the query proportions, or None for balanced queries;
    ``transductive``: whether the learner used each episode's unlabelled queries)."""
    t0 = time.perf_counter()
    accs = episode_accuracies(learner, store, ways, shots, queries, episodes, seed, meta_batch, device,
                              progress, cache_features, imbalance)
    mean, ci = mean_ci95(accs)
    return {
        "acc": round(100 * mean, 4), "ci95": round(100 * ci, 4), "episodes": episodes, "ways": ways,
        "shots": shots, "queries": queries, "seed": seed, "dataset": store.meta.get("name", "?"),
        "algorithm": learner.algorithm_name, "seconds": round(time.perf_counter() - t0, 2),
        "imbalance": imbalance, "transductive": bool(getattr(learner, "uses_queries", False)),
    }


class OverrideError(ValueError):
    """An evaluation setting the learner does not accept, or a value out of range.

    ``name`` is the setting (registered in :mod:`metashot.eval_settings`) and ``reason`` the rest of the
    message, so a caller can name the setting its own way (the CLI names its flag).
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(f"evaluation setting {name!r} {reason}")


def apply_eval_settings(learner: MetaLearner, **settings: Any) -> MetaLearner:
    """Set test-time ``settings`` (e.g. ``vectorized=False``, ``inner_steps_test=3``) on ``learner``, in the
    order given; returns it.

    Raises:
        OverrideError: a name that is no evaluation setting, one the learner's ``config_dict()`` does not
            declare (naming the algorithm), or a value below the setting's minimum.
    """
    declared = learner.eval_settings() if settings else []
    for name, value in settings.items():
        if name not in EVAL_SETTINGS:
            raise OverrideError(name, f"is not one evaluation may change; those are {EVAL_SETTINGS.names()}")
        s = EVAL_SETTINGS.get(name)
        kind, low = s.kind, s.minimum
        if name not in declared:
            raise OverrideError(name, f"applies to the gradient-based learners (whose config has {name!r}); "
                                      f"{type(learner).__name__} ({learner.algorithm_name}) has {s.lacks}")
        if low is not None and value < low:
            raise OverrideError(name, f"must be >= {low}, got {value}")
        setattr(learner, name, kind(value))
    return learner


def config_sections(meta: dict[str, Any], checkpoint: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``data`` and ``eval`` sections of a checkpoint's config; a missing one is an error naming them."""
    cfg = meta["config"]
    missing = [k for k in ("data", "eval") if not isinstance(cfg.get(k), dict)]
    if "data" not in missing:
        missing += [f"data.{k}" for k in ("dataset", "test_split") if k not in cfg["data"]]
    if missing:
        raise ValueError(f"checkpoint {checkpoint}: the config in its config.json lacks "
                         f"{', '.join(repr(k) for k in missing)}; re-create the checkpoint")
    return cfg["data"], cfg["eval"]


def _given(value: Any, default: Any) -> Any:
    """``value`` unless it was not given (None); unlike ``value or default``, 0 is not "not given"."""
    return default if value is None else value


def evaluate_checkpoint(name_or_path: str | Path, *, dataset: str | None = None, split: str | None = None,
                        root: str | Path | None = None, ways: int | None = None, shots: int | None = None,
                        queries: int | None = None, episodes: int | None = None, seed: int | None = None,
                        meta_batch: int | None = None, device: str | torch.device = "cpu",
                        progress: bool = True, imbalance: float | None = None,
                        **settings: Any) -> dict[str, Any]:
    """Accuracy of a checkpoint (folder, run folder or bundled name) on fixed seeded episodes.

    Every argument left None takes the checkpoint's own config (``data.dataset``, ``data.test_split``, the
    ``eval`` section; 1000 episodes on Omniglot, the ProtoNet paper's protocol). ``settings`` are test-time
    settings the learner declares (:func:`apply_eval_settings`). A user's folder, and a photo dataset for a
    pretrained model, are read with the checkpoint's preprocessing. Returns :func:`evaluate`'s dict plus
    ``checkpoint``.
    """
    from metashot.checkpoint import load_checkpoint
    from metashot.data import DATASETS, load_split
    from metashot.data.checks import check_channels

    learner, meta = load_checkpoint(name_or_path, device)
    if settings:
        apply_eval_settings(learner, **settings)
    data, ev = config_sections(meta, name_or_path)
    dataset = dataset or data["dataset"]
    split = split or data["test_split"]
    info = DATASETS.entry(dataset)
    episodes = _given(episodes, info.test_episodes or ev["episodes"])
    options = dict(data.get("options") or {}) if dataset == data["dataset"] else {}
    spec = meta.get("image_spec")
    if spec and (info.image_spec == "always" or ("crop_pct" in spec and info.image_spec == "pretrained")):
        # A user's own folder is read as `predict` reads it, with the checkpoint's preprocessing (size,
        # channels, ink polarity, crop); so is a photo dataset for a pretrained model's own input pipeline.
        options["image_spec"] = spec
    store = load_split(dataset, split, root or data.get("root"), data.get("image_size"), **options)
    check_channels(store, spec, f"checkpoint {name_or_path}", trained_on=data["dataset"])
    res = evaluate(learner, store, _given(ways, ev["ways"]), _given(shots, ev["shots"]),
                   _given(queries, ev["queries"]), episodes, _given(seed, ev["seed"]),
                   _given(meta_batch, ev.get("meta_batch", 16)), device, progress=progress,
                   imbalance=imbalance)
    res["checkpoint"] = str(name_or_path)
    return res


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


def verification_accuracy(learner: MetaLearner, store: ClassStore, pairs: int = 2000, seed: int = 4321,
                          batch: int = 500, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Same/different accuracy (percent) of a Siamese ``learner`` on ``pairs`` balanced held-out pairs of
    ``store`` (seeded by ``seed``): the learner's ``extra_metrics``."""
    if type(learner).extra_metrics is MetaLearner.extra_metrics:
        raise ValueError(f"verification_accuracy: needs a Siamese network (algorithm 'siamese'), got "
                         f"{type(learner).__name__} ({learner.algorithm_name})")
    return learner.extra_metrics(store, pairs=pairs, seed=seed, batch=batch, device=device)
