"""A Trainer's training state (:meth:`metashot.trainer.Trainer.state_dict`) as (named tensors, JSON) and back:
what ``last/`` holds besides the weights.

Everything the next step depends on is saved: optimizer moments, the schedule, every RNG state (torch CPU
and CUDA, numpy, Python), the step, the best validation score and the early-stopping count, so an
interrupted and resumed run ends with exactly the parameters of an uninterrupted one. Never pickle: the
tensors go to ``train_state.safetensors`` and the rest to ``train_state.json`` (see
:func:`metashot.checkpoint.save_train_state`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metashot.checkpoint import CheckpointError, load_train_state, read_meta, read_weights


def optimizer_state_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's ``state_dict`` as named tensors plus a JSON-able remainder (no pickle)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_unflat(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_state_flat`: load the state into ``opt``."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, d in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(d)
    groups = []
    for saved, now in zip(meta["param_groups"], opt.param_groups, strict=False):
        # JSON turns tuples (Adam's betas) into lists; give them back their type
        groups.append({k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in saved.items()})
    if len(groups) != len(opt.param_groups):
        raise CheckpointError(
            f"training state has {len(meta['param_groups'])} optimizer parameter groups but the "
            f"optimizer has {len(opt.param_groups)}; was the config's model changed?"
        )
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy and Python global RNG states as tensors + JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    py = random.getstate()
    tensors["rng.python"] = torch.tensor(py[1], dtype=torch.int64)
    meta = {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": [py[0], py[2]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state` (CUDA states only for the devices this machine has)."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy.keys"].numpy().view(np.uint32), pos, has_gauss, gauss))
    v, g = meta["python"]
    random.setstate((v, tuple(int(x) for x in tensors["rng.python"].tolist()), g))


def state_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A :meth:`Trainer.state_dict <metashot.trainer.Trainer.state_dict>` as (named tensors, JSON-able dict):
    what :func:`metashot.checkpoint.save_train_state` writes."""
    (ot, om), (rt, rm) = state["optimizer"], state["rng"]
    return {**ot, **rt}, {**state, "optimizer": om, "rng": rm}


def read_train_state(path: str | Path) -> dict[str, Any]:
    """The training state that checkpoint ``path`` holds, as a Trainer's ``state_dict`` (inverse of
    :func:`state_files` after the files were written and checked).

    Raises:
        CheckpointError: no training state, or a file that does not match its SHA-256.
    """
    tensors, meta = load_train_state(path)
    return {**meta, "optimizer": (tensors, meta["optimizer"]), "rng": (tensors, meta["rng"])}


def load_weights(learner: torch.nn.Module, path: str | Path, device: str | torch.device) -> None:
    """Load the weights of checkpoint ``path`` into ``learner`` (all of them, checked against their SHA-256).

    Raises:
        CheckpointError: an unreadable or modified file, or weights that do not fit the model.
    """
    path = Path(path)
    meta = read_meta(path)
    state = read_weights(path, meta, device)  # checks the SHA-256; unreadable files: CheckpointError
    try:
        learner.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path}: weights do not match this run's model "
            f"({str(e).splitlines()[0]}); resume with the run's own config"
        ) from e
