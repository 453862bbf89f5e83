"""Settings a checkpoint's learner may be evaluated with instead of its own: they change no weight.

Each setting is registered here once, with its type, its smallest allowed value, what a learner without it
lacks and the ``metashot eval`` flag that sets it; the CLI builds its flags (and names them in errors) from
this registry, and :func:`metashot.evaluate.apply_eval_settings` checks values against it. A learner accepts
a setting when it declares it (:meth:`metashot.algorithms.base.MetaLearner.eval_settings`: the keys of its
``config_dict()`` that are registered here). Adding a setting is one ``EVAL_SETTINGS.add`` call; no torch
here, so ``metashot --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metashot.registry import Registry


@dataclass(frozen=True)
class EvalSetting:
    """One evaluation setting.

    ``flag``: the CLI flag that names it (in errors too); ``flag_args``: its argparse arguments when the
    ``eval`` command has the flag (None: another command sets it); ``from_flag``: the setting's value from the
    parsed flag (None: not given).
    """

    kind: type
    minimum: float | None
    lacks: str
    flag: str
    flag_args: dict[str, Any] | None = None
    from_flag: Callable[[Any], Any] = field(default=lambda v: v)


EVAL_SETTINGS: Registry[EvalSetting] = Registry("evaluation setting")

EVAL_SETTINGS.add("vectorized", EvalSetting(
    bool, None, "no inner loop to vectorise", "--path", dict(
        choices=["vectorized", "loop"], help="MAML family: adapt the episodes of a batch with vmap or one by "
        "one (the same numbers up to rounding; on CPU the loop is faster for large images, e.g. 84x84; "
        "default: the checkpoint's own setting)"),
    lambda v: None if v is None else v == "vectorized"))
EVAL_SETTINGS.add("inner_steps_test", EvalSetting(
    int, 0, "no inner loop", "--inner-steps", dict(
        type=int, help="MAML family: gradient steps on each support set at test (default: the checkpoint's "
        "inner_steps_test)")))
EVAL_SETTINGS.add("inner_lr", EvalSetting(float, None, "no inner-loop step size", "--inner-lr"))
EVAL_SETTINGS.add("transductive", EvalSetting(
    bool, None, "no transductive head", "--inductive", dict(
        action="store_true", help="a transductive head classifies each query alone (its inductive rule, "
        "nearest class mean)"),
    lambda v: False if v else None))


def eval_flags() -> list[tuple[str, dict[str, Any]]]:
    """The ``metashot eval`` flags of the registered settings, in name order."""
    return [(e.obj.flag, e.obj.flag_args) for e in EVAL_SETTINGS.entries() if e.obj.flag_args is not None]


def settings_from_flags(values: dict[str, Any]) -> dict[str, Any]:
    """The settings that parsed flags set: ``values`` maps a flag's argparse name (``inner_steps``) to its
    value; settings whose flag was not given are left out."""
    out = {}
    for e in EVAL_SETTINGS.entries():
        if e.obj.flag_args is None:
            continue
        value = e.obj.from_flag(values.get(e.obj.flag.lstrip("-").replace("-", "_")))
        if value is not None:
            out[e.name] = value
    return out


def setting_flag(name: str) -> str | None:
    """The flag that names setting ``name`` (None for a name that is no setting)."""
    return EVAL_SETTINGS.get(name).flag if name in EVAL_SETTINGS else None
