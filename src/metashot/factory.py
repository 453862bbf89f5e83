"""The one learner factory: a model config -> a :class:`~metashot.algorithms.base.MetaLearner`.

Training, checkpoint loading, evaluation and the classifier all build learners here. The algorithm and the
backbone come from their registries (``@register``, ``@register_backbone``); arguments a constructor does
not take are an error naming them (checked against its signature, before the call), and an error raised
inside a constructor passes unchanged: nothing here catches it.
"""

from __future__ import annotations

from typing import Any

from metashot.algorithms import algorithm_class
from metashot.algorithms.base import MetaLearner
from metashot.nn.backbones import build_backbone
from metashot.registry import call_with


def model_section(config: Any) -> dict[str, Any]:
    """The model section as a dict, from a :class:`~metashot.config.Config`, a ``ModelConfig`` or a dict."""
    model = getattr(config, "model", config)
    return dict(model if isinstance(model, dict) else model.__dict__)


def create_learner(config: Any, learner_args: dict[str, Any] | None = None) -> MetaLearner:
    """The learner of ``config`` (a Config, a ModelConfig or a model dict: ``algorithm``, ``backbone``,
    ``backbone_args``, ``algorithm_args``); ``learner_args`` (what a checkpoint records) update
    ``algorithm_args``.

    Raises:
        ValueError: an unknown algorithm or backbone, or arguments its constructor does not take.
    """
    model = model_section(config)
    name = model["algorithm"]
    cls = algorithm_class(name)
    backbone = build_backbone(model["backbone"], **model.get("backbone_args", {}))
    args = dict(model.get("algorithm_args", {}))
    args.update(learner_args or {})
    return call_with(cls, args, lambda e: f"algorithm {name!r}: bad algorithm_args {args}: {e}", backbone)


def build_learner(model_cfg: dict[str, Any], learner_args: dict[str, Any] | None = None) -> MetaLearner:
    """:func:`create_learner` under its older name (a model dict)."""
    return create_learner(model_cfg, learner_args)

