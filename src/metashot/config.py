"""Typed run configuration, read from YAML presets (``configs/*.yaml``) with ``--set key=value`` overrides.

Unknown keys, wrongly typed values and values out of their range (:data:`RANGES`) are errors that name the
key, so a typo never silently trains the wrong model. Numbers may be written in any spelling a person types
(``1e-3``, ``1E-3``, ``.5``, ``5.``, ``1_000``, ``-inf``), including the ones YAML 1.1 reads as strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml


@dataclass
class DataConfig:
    """Which dataset and splits.

    ``dataset``: omniglot | mini_imagenet | folder | sinusoid | a text set | any registered dataset.
    """

    dataset: str = "omniglot"
    root: str | None = None  # data root; None = $METASHOT_DATA
    image_size: int = 28
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific extras


@dataclass
class EpisodeConfig:
    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 1  # tasks per step (training) or per forward (evaluation)
    within_group: float = 0.0  # training: fraction of episodes drawn within one class group (e.g. alphabet)
    group_depth: int = 1  # the group is the first group_depth '/'-separated components of the class name


@dataclass
class ModelConfig:
    algorithm: str = "protonet"
    backbone: str = "conv4"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    algorithm_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    steps: int = 1000
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9  # sgd only (0 = plain SGD, e.g. Reptile's outer interpolation step)
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "step"  # constant | step | cosine
    lr_step: int = 2000  # step schedule: multiply by lr_gamma every lr_step steps
    lr_gamma: float = 0.5
    grad_clip: float | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    log_every: int = 50
    val_every: int = 0  # 0 = no validation during training
    val_episodes: int = 200
    val_seed: int = 777
    checkpoint_every: int = 0  # 0 = only at the end (and the best on validation)
    early_stop_patience: int = 0  # validations without improvement before stopping; 0 = never
    target_val_acc: float | None = None  # stop once validation accuracy (percent) reaches this
    out_dir: str | None = None  # None = runs/<name>
    lr_min: float = 0.0  # cosine schedule: final learning rate
    tensorboard: bool = False  # also write TensorBoard events to <out_dir>/tensorboard (needs tensorboard)
    # GPU options (all opt-in; no effect on the default CPU path)
    precision: str = "fp32"  # fp32 | bf16 (autocast around the meta-loss)
    compile: bool = False  # torch.compile the learner's meta_loss
    data_on_device: bool = False  # keep the training store's images on the device; episodes indexed there
    pin_memory: bool = False  # pinned host memory + non_blocking copies for each batch (CUDA only)
    dist_backend: str | None = None  # backend under torchrun; None = nccl on CUDA, else gloo


@dataclass
class EvalConfig:
    ways: int = 5
    shots: int = 1
    queries: int = 15
    episodes: int = 600
    seed: int = 1234
    meta_batch: int = 16


@dataclass
class RunConfig:
    """What every run configuration shares (:class:`Config`; meta-RL's ``RLConfig``): a ``name``, a ``train``
    section with ``out_dir``, a JSON form, and reading from a dict with every key type- and range-checked."""

    name: str = "run"
    if TYPE_CHECKING:  # each kind of run has its own train section; all have out_dir
        train: Any

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any], source: str = "config") -> _C:
        """Build from ``d`` (``source`` names it in errors), then :meth:`validate` what spans keys."""
        cfg = _build(cls, d, source)
        cfg.validate(source)
        return cfg

    def validate(self, where: str) -> None:
        """Checks that span several keys (each key's type and range are checked while reading); none here."""

    def out_dir(self) -> Path:
        """``train.out_dir``, or ``runs/<name>``."""
        return Path(self.train.out_dir) if self.train.out_dir else Path("runs") / self.name


_C = TypeVar("_C", bound=RunConfig)


@dataclass
class Config(RunConfig):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key: ``lo``..``hi``, each end included or not (an open end at infinity
    excludes infinity itself; NaN is never in a range)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""  # what special values mean, e.g. "0 = off"

    def __contains__(self, v: float) -> bool:
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below

    def __str__(self) -> str:
        def end(x: float) -> str:
            return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"

        text = f"{'(' if self.lo_open else '['}{end(self.lo)}, {end(self.hi)}{')' if self.hi_open else ']'}"
        return f"{text} ({self.note})" if self.note else text


_AT_LEAST_1 = Range(1, math.inf, hi_open=True)
_AT_LEAST_0 = Range(0, math.inf, hi_open=True)
_OFF_OR_EVERY = Range(0, math.inf, hi_open=True, note="0 = off")
_FRACTION = Range(0, 1)

#: Allowed range of every numeric key, per configuration class (null, where a key allows it, is always fine).
#: Other configuration dataclasses built with :func:`_build` may add their own entries.
RANGES: dict[type, dict[str, Range]] = {
    DataConfig: {"image_size": _AT_LEAST_1},
    EpisodeConfig: {
        "ways": _AT_LEAST_1, "shots": _AT_LEAST_1, "queries": _AT_LEAST_1, "meta_batch": _AT_LEAST_1,
        "within_group": _FRACTION, "group_depth": _AT_LEAST_1,
    },
    TrainConfig: {
        "steps": Range(0, math.inf, hi_open=True, note="0 = nothing to train"),
        "momentum": Range(0, 1, hi_open=True),
        "lr": _AT_LEAST_0,
        "weight_decay": _AT_LEAST_0,
        "lr_step": _AT_LEAST_1,
        "lr_gamma": Range(0, math.inf, lo_open=True, hi_open=True),
        "grad_clip": Range(0, math.inf, hi_open=True, note="0 or null = off"),
        "seed": _AT_LEAST_0,
        "threads": _AT_LEAST_1,
        "log_every": _AT_LEAST_1,
        "val_every": _OFF_OR_EVERY,
        "val_episodes": _AT_LEAST_1,
        "val_seed": _AT_LEAST_0,
        "checkpoint_every": Range(0, math.inf, hi_open=True, note="0 = only at the end"),
        "early_stop_patience": Range(0, math.inf, hi_open=True, note="0 = never"),
        "target_val_acc": Range(0, 100, note="percent"),
        "lr_min": _AT_LEAST_0,
    },
    EvalConfig: {
        "ways": _AT_LEAST_1, "shots": _AT_LEAST_1, "queries": _AT_LEAST_1, "episodes": _AT_LEAST_1,
        "seed": _AT_LEAST_0, "meta_batch": _AT_LEAST_1,
    },
}


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} in {cls.__name__}; valid keys: {sorted(names)}")
    kwargs = {}
    for k, v in d.items():
        t = hints[k]
        if dataclasses.is_dataclass(t):
            kwargs[k] = _build(t, v, f"{where}.{k}")
        else:
            kwargs[k] = _coerce(v, t, f"{where}.{k}")
            allowed = RANGES.get(cls, {}).get(k)
            value = kwargs[k]
            if allowed is not None and isinstance(value, (int, float)) and value not in allowed:
                kind = "an integer" if isinstance(value, int) else "a number"
                raise ValueError(f"{where}.{k}: {value!r} is out of range; expected {kind} in {allowed}")
    return cls(**kwargs)


def _coerce(v: Any, t: Any, where: str) -> Any:
    origin = typing.get_origin(t)
    args = typing.get_args(t)
    if v is None:
        if type(None) in args:
            return None
        raise ValueError(f"{where}: value must not be null")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(v, a, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {v!r} does not fit {t}")
    if t is bool:
        if isinstance(v, bool):
            return v
        raise ValueError(f"{where}: expected true/false, got {v!r}")
    if t is int:
        if isinstance(v, str):
            v = _number(v, where, "an integer")
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise ValueError(f"{where}: expected an integer, got {v!r}")
        return int(v)
    if t is float:
        if isinstance(v, str):
            v = _number(v, where, "a number")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{where}: expected a number, got {v!r}")
        return float(v)
    if t is str:
        if not isinstance(v, str):
            raise ValueError(f"{where}: expected a string, got {v!r}")
        return v
    if origin is dict or t is dict:
        if not isinstance(v, dict):
            raise ValueError(f"{where}: expected a mapping, got {v!r}")
        return dict(v)
    return v


# A decimal number as people type it (YAML 1.1 reads 1e-3, 1E3 and -inf as strings): digits with single
# underscores between them, an optional fraction and exponent; or inf / infinity / nan (YAML's dot optional).
_DIGITS = r"\d(?:_?\d)*"
_DECIMAL = re.compile(rf"[+-]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?")
_SPECIAL = re.compile(r"[+-]?\.?(?:inf|infinity|nan)", re.IGNORECASE)


def _number(text: str, where: str, kind: str) -> int | float:
    """``text`` as an int (integer spelling) or a float, or ValueError naming ``where``."""
    t = text.strip()
    if _SPECIAL.fullmatch(t):
        return float(t.replace(".", ""))
    if not _DECIMAL.fullmatch(t):
        raise ValueError(f"{where}: expected {kind}, got {text!r}")
    t = t.replace("_", "")
    return float(t) if any(c in t for c in ".eE") else int(t)


#: The most values (mappings, lists, keys and scalars, counted with every alias expanded) a configuration may
#: hold: a real one holds a few hundred. YAML aliases (``*name``) can make a small file stand for billions of
#: values ("billion laughs"), which copying the configuration would expand.
MAX_CONFIG_VALUES = 100_000


def expanded_size(obj: Any, limit: int = MAX_CONFIG_VALUES) -> int:
    """How many values ``obj`` holds with every shared (aliased) part counted each time it appears; stops
    counting past ``limit`` (so a recursive or exploding structure costs at most ``limit`` visits)."""
    count, stack = 0, [obj]
    while stack and count <= limit:
        x = stack.pop()
        count += 1
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return count


def _check_size(obj: Any, what: str) -> None:
    if expanded_size(obj) > MAX_CONFIG_VALUES:
        raise ValueError(f"{what} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases that "
                         f"repeat each other, or a structure that contains itself); write the values out "
                         f"instead of aliasing them")


def read_yaml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML preset as a dict, with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from e
    _check_size(raw, f"config file {path}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} holds a YAML {type(raw).__name__}, not a mapping of sections "
                         f"(name:, data:, model:, train:, ...); see configs/*.yaml for the layout")
    return apply_overrides(raw, overrides or [])


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML preset and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    return Config.from_dict(read_yaml(path, overrides), source=str(path))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    _check_size(raw, "the configuration")
    raw = json.loads(json.dumps(raw))
    for ov in overrides:
        if "=" not in ov:
            raise ValueError(f"--set expects key=value, got {ov!r}")
        key, val = ov.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: the configuration is a {type(node).__name__}, not a mapping of "
                             f"sections")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p} is not a section")
        try:
            value = yaml.safe_load(val)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {key}: {val!r} is not a valid YAML value ({str(e).splitlines()[0]})"
                             ) from None
        _check_size(value, f"--set {key}")
        node[parts[-1]] = json.loads(json.dumps(value))
    return raw
