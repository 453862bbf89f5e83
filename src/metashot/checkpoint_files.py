"""The files a checkpoint may name: a frozen trunk's local weights file is copied into the checkpoint when
it is saved, and a loaded checkpoint may open only files inside its own folder or the package's weights."""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint is missing, tampered with, truncated or does not match its model."""


PRETRAINED_FILE = "pretrained"  # + the source's suffix: a frozen trunk's local weights file in a checkpoint


def bring_pretrained_file(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """A frozen trunk built from a local weights file (``backbone_args.pretrained: PATH``) needs that file
    when the checkpoint is loaded, and a checkpoint may name only files inside its own folder
    (:func:`confined_model`): copy the file into ``folder`` and return ``config`` naming the copy."""
    model = config.get("model") if isinstance(config, dict) else None
    args = model.get("backbone_args") if isinstance(model, dict) else None
    src = args.get("pretrained") if isinstance(args, dict) else None
    if not isinstance(src, str) or not Path(src).expanduser().is_file():
        return config
    src_path = Path(src).expanduser()
    name = PRETRAINED_FILE + "".join(src_path.suffixes[-1:])
    shutil.copyfile(src_path, folder / name)
    return {**config, "model": {**model, "backbone_args": {**args, "pretrained": name}}}


def package_weights_root() -> Path:
    """The folder of the checkpoints and weights that ship inside the package."""
    return Path(str(resources.files("metashot").joinpath("weights")))


def _inside(file: Path, folder: Path) -> bool:
    real, root = os.path.realpath(file), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def confined_model(path: Path, meta: dict[str, Any], model_cfg: dict[str, Any]) -> dict[str, Any]:
    """``model_cfg`` with a weights file named by ``backbone_args.pretrained`` confined to the checkpoint.

    A checkpoint is data from anywhere: it may name only files inside its own folder (a relative name is
    relative to it) or inside the package's weights, never ``../../etc/passwd`` or ``/proc/self/environ``.
    A trunk whose weights the checkpoint holds (nothing recorded under ``external_weights``) needs no file
    at all: it is built without one. Returns the model section with the file's absolute path.
    """
    args = model_cfg.get("backbone_args")
    if not isinstance(args, dict) or not isinstance(args.get("pretrained"), str):
        return model_cfg
    name = args["pretrained"]
    if not meta.get("external_weights"):  # the checkpoint holds the trunk's weights: the file is not needed
        return {**model_cfg, "backbone_args": {**args, "pretrained": False}}
    file = path / name  # (an absolute name stays absolute)
    if not any(_inside(file, root) for root in (path, package_weights_root())):
        raise CheckpointError(
            f"checkpoint {path}: backbone_args.pretrained names {name!r}, outside the checkpoint's folder; "
            f"a checkpoint may name only files inside its own folder or the package's weights. Copy the "
            f"weights file into {path} and write its file name there in config.json")
    return {**model_cfg, "backbone_args": {**args, "pretrained": os.path.realpath(file)}}
