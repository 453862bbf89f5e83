"""Typed run configuration, read from YAML presets (``configs/*.yaml``) with ``--set key=value`` overrides.

Unknown keys and wrongly typed values are errors that name the key, so a typo never silently trains the
wrong model.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> Config:
        return _build(cls, d, source)

    def out_dir(self) -> Path:
        return Path(self.train.out_dir) if self.train.out_dir else Path("runs") / self.name


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
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise ValueError(f"{where}: expected an integer, got {v!r}")
        return int(v)
    if t is float:
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


def read_yaml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML preset as a dict, with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from e
    return apply_overrides(raw, overrides or [])


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML preset and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    return Config.from_dict(read_yaml(path, overrides), source=str(path))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = json.loads(json.dumps(raw))
    for ov in overrides:
        if "=" not in ov:
            raise ValueError(f"--set expects key=value, got {ov!r}")
        key, val = ov.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(val)
    return raw
