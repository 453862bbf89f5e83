"""From a run's config to its data: the training batches and the validation store.

The one place that maps ``data.dataset`` to a batch source (anything with ``sample(index) -> batch``, batch
``i`` a function of ``(train.seed, i)`` only). Class-store datasets (images, sentences: every name that
:func:`metashot.data.load_split` knows) give episodes (:class:`EpisodeSampler`, gathered on the device with
``train.data_on_device``); generated task families (sinusoid regression) give their own batches and are
registered here with :func:`register_source`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from metashot.config import Config
from metashot.data import load_split
from metashot.data.device import DeviceSampler
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore
from metashot.registry import Registry

SOURCES: Registry[Callable[[Config], Any]] = Registry("batch source")


class BatchSource(Protocol):
    """What the Trainer draws batches from: batch ``i`` of a run is ``sample(i)``."""

    def sample(self, batch_index: int) -> Any: ...


def register_source(name: str) -> Callable[[Callable[[Config], Any]], Callable[[Config], Any]]:
    """Register ``fn(cfg) -> batch source`` for ``data.dataset: name`` (a dataset without a class store)."""
    return SOURCES.register(name)


@register_source("sinusoid")
def _sinusoid(cfg: Config) -> Any:
    """Regression tasks (MAML section 5.1); ``data.options`` may set amplitude, phase, x_range."""
    from metashot.data.sinusoid import sinusoid_source

    ep = cfg.episodes
    return sinusoid_source(cfg.data.options, ep.shots, ep.queries, ep.meta_batch, cfg.train.seed)


def train_source(cfg: Config, image_spec: Any = None,
                 device: torch.device | None = None) -> tuple[BatchSource, dict[str, Any]]:
    """The batch source of ``data.train_split`` and what it adds to every checkpoint's ``config.json``.

    Args:
        image_spec: the backbone's own preprocessing (a pretrained timm model's), if it has one.
        device: keep the store's images there and gather episodes there (``train.data_on_device``); None:
            episodes are gathered on the CPU.

    Returns:
        (source, extra): ``extra`` records the store's ``image_spec`` (how inputs were preprocessed).
    """
    d = cfg.data
    if d.dataset in SOURCES:
        make = SOURCES.get(d.dataset)
        if device is not None:
            raise ValueError(f"{cfg.name}: train.data_on_device applies to datasets with a class store; "
                             f"{d.dataset!r} batches are generated on the CPU (set it to false)")
        return make(cfg), {}
    store = config_split(cfg, d.train_split, image_spec)
    ep = cfg.episodes
    sampler = EpisodeSampler(
        store, ep.ways, ep.shots, ep.queries, seed=cfg.train.seed, tasks_per_batch=ep.meta_batch,
        within_group=ep.within_group, group_depth=ep.group_depth,
    )
    source: Any = sampler if device is None else DeviceSampler(sampler, device)
    extra = {"image_spec": store.meta["image_spec"]} if "image_spec" in store.meta else {}
    return source, extra


def val_store(cfg: Config, image_spec: Any = None) -> ClassStore | None:
    """The store of ``data.val_split`` for episodic validation; None without one (no split named, or a
    generated dataset, which has no classes to hold out)."""
    d = cfg.data
    if d.dataset in SOURCES or not d.val_split:
        return None
    return config_split(cfg, d.val_split, image_spec)


def config_split(cfg: Config, split: str, image_spec: Any = None) -> ClassStore:
    """The store of ``split`` of the config's dataset (root, image size and options from ``cfg.data``),
    preprocessed with ``image_spec`` (a pretrained backbone's own pipeline) if given."""
    d = cfg.data
    return load_split(d.dataset, split, d.root, d.image_size, image_spec=image_spec, **d.options)
