"""Checkpoints: a folder with ``weights.safetensors`` and ``config.json``; never pickle.

``config.json`` holds the run's :class:`~metashot.config.Config`, the learner's constructor arguments, the
preprocessing of its inputs, and the SHA-256 of the weights file, so a tampered or truncated weights file is
caught before it is loaded, and a weights file that does not match the model is a clear error.

Writes are crash-safe: a checkpoint is written into a hidden temporary folder ``.NAME.xxxxxxxx`` (its
``config.json`` last, so a folder with a ``config.json`` whose weights match their SHA-256 is complete), then
swapped in by two renames (``NAME`` -> ``.NAME.old``, temporary -> ``NAME``) with SIGINT/SIGTERM deferred. A
process killed between the renames leaves a complete hidden copy: :func:`resolve` reads it, and
:func:`recover` (called by training under the run folder's lock) renames it back into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from metashot.algorithms.base import MetaLearner
from metashot.catalogue import CHECKPOINT_CONFIG, bundled_names, bundled_path
from metashot.checkpoint_files import (  # noqa: F401 (re-exported)
    PRETRAINED_FILE,
    CheckpointError,
    bring_pretrained_file,
    confined_model,
    package_weights_root,
)
from metashot.digest import file_digest
from metashot.factory import build_learner, create_learner  # noqa: F401 (build_learner: re-exported)
from metashot.signals import deferred_signals

WEIGHTS = "weights.safetensors"
CONFIG = CHECKPOINT_CONFIG  # "config.json"
FORMAT = "metashot-checkpoint-1"
TRAIN_STATE_TENSORS = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
TRAIN_STATE_FORMAT = "metashot-train-state-1"


# Fault injection: called with the name of each step of a checkpoint write ("written": the temporary
# folder is complete; "moved_old": the old folder is renamed away; "moved_new": the new one is in
# place; "cleaned": the old copy is removed). Tests replace it with a function that raises or copies the disk.
def _fault_point(stage: str) -> None:
    return None


def _hidden_copies(path: Path) -> list[Path]:
    """The hidden folders that writes of checkpoint ``path`` leave beside it (``.NAME.old`` and temporary
    ``.NAME.xxxxxxxx``), newest first, the ``.old`` copy last."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.([a-z0-9_]{{8}}|old)$")
    try:
        entries = [e for e in path.parent.iterdir() if pattern.match(e.name) and e.is_dir()]
    except OSError:
        return []

    def order(e: Path) -> tuple[int, float]:
        try:
            return (e.name.endswith(".old"), -e.stat().st_mtime)
        except OSError:
            return (True, 0.0)
    return sorted(entries, key=order)


def is_complete(folder: Path) -> bool:
    """``folder`` holds a readable ``config.json`` and weights that match its SHA-256."""
    try:
        meta = json.loads((folder / CONFIG).read_text())
        return (isinstance(meta, dict) and meta.get("format") == FORMAT
                and sha256_file(folder / WEIGHTS) == meta.get("weights_sha256"))
    except (OSError, ValueError):
        return False


def complete_copy(path: str | Path) -> Path | None:
    """If checkpoint folder ``path`` is missing (a write was killed between its two renames), the newest
    complete hidden copy of it; else None. Reads only."""
    path = Path(path)
    if path.exists():
        return None
    return next((c for c in _hidden_copies(path) if is_complete(c)), None)


def clean_hidden_copies(path: str | Path) -> list[Path]:
    """Remove the hidden leftovers of writes of checkpoint ``path``; returns what was removed."""
    removed = _hidden_copies(Path(path))
    for c in removed:
        shutil.rmtree(c, ignore_errors=True)
    return removed


def recover(path: str | Path) -> bool:
    """Repair checkpoint folder ``path`` after a killed write: if it is missing but a complete hidden copy
    exists, rename that into place (with a warning); then remove the leftovers. Only for the process that
    owns the folder (training holds the run folder's lock). Returns True if a copy was restored."""
    path = Path(path)
    copy = complete_copy(path)
    if copy is not None:
        os.replace(copy, path)
        warnings.warn(f"checkpoint {path} was missing (a write was interrupted between its renames); "
                      f"restored it from the complete copy {copy.name}", stacklevel=2)
    if (path / CONFIG).is_file():
        clean_hidden_copies(path)
    return copy is not None


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def save_checkpoint(path: str | Path, learner: MetaLearner, config: dict[str, Any],
                    extra: dict[str, Any] | None = None,
                    train_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> Path:
    """Write ``learner``'s weights and ``config`` into folder ``path`` atomically (replaces an old one).

    ``train_state`` (tensors, JSON-able dict), if given, is written beside the weights as
    ``train_state.safetensors`` + ``train_state.json`` inside the same atomic folder swap (see
    :func:`save_train_state`), so weights and the optimizer state that produced them never disagree.
    """
    return save_module(path, learner, config, learner.algorithm_name, learner.config_dict(), extra,
                       train_state)


def save_module(path: str | Path, module: torch.nn.Module, config: dict[str, Any], algorithm: str,
                module_args: dict[str, Any], extra: dict[str, Any] | None = None,
                train_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> Path:
    """Write any module's weights into checkpoint folder ``path`` atomically, as :func:`save_checkpoint` does.

    ``config.json`` records ``algorithm`` (e.g. ``rl-policy``), ``module_args`` (as ``learner_args``: what
    rebuilds the module), the run's ``config`` dict and the weights' SHA-256, plus the ``extra`` entries.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with deferred_signals():
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700: a checkpoint is for every user of the machine to read
        old = path.with_name(f".{path.name}.old")
        try:
            ext_keys, ext_digests = external_state(module)
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()
                     if k not in ext_keys}
            save_file(state, str(tmp / WEIGHTS))
            if ext_digests:
                config = bring_pretrained_file(tmp, config)
            if train_state is not None:
                save_train_state(tmp, *train_state)
            meta = {
                "format": FORMAT,
                "algorithm": algorithm,
                "learner_args": module_args,
                "config": config,
                "weights_sha256": sha256_file(tmp / WEIGHTS),
                **({"external_weights": ext_digests} if ext_digests else {}),
                **(extra or {}),
            }
            (tmp / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))  # last: marks it complete
            for f in tmp.iterdir():  # safetensors writes 0600 files
                os.chmod(f, 0o644)
            _fault_point("written")
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                _fault_point("moved_old")
            os.replace(tmp, path)
            _fault_point("moved_new")
        except BaseException:
            if not path.exists() and is_complete(old):
                os.replace(old, path)  # never leave the name empty: the previous checkpoint comes back
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        clean_hidden_copies(path)  # .NAME.old and the leftovers of earlier killed writes
        _fault_point("cleaned")
    return path


def external_state(learner: torch.nn.Module) -> tuple[set[str], dict[str, str]]:
    """State keys that modules rebuild from a pretrained source (frozen timm trunks), and their digests.

    Such tensors are not written into checkpoints; the checkpoint records the digest of each source, and
    loading rebuilds the weights and checks that digest.
    """
    keys: set[str] = set()
    digests: dict[str, str] = {}
    for name, mod in learner.named_modules():
        fn = getattr(mod, "external_state_keys", None)
        if fn is None:
            continue
        own = fn()
        if own:
            pre = f"{name}." if name else ""
            keys |= {pre + k for k in own}
            digests[name or "."] = mod.external_digest()
    return keys, digests


def save_train_state(folder: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write training state (optimizer moments, RNG states, ...) as safetensors + JSON into ``folder``.

    Never pickle: tensors go to ``train_state.safetensors``, everything else (step, schedule, best metric,
    optimizer hyper-parameters) to ``train_state.json``, which also records the tensors' SHA-256.
    """
    folder = Path(folder)
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(flat, str(folder / TRAIN_STATE_TENSORS))
    doc = {"format": TRAIN_STATE_FORMAT, "tensors_sha256": sha256_file(folder / TRAIN_STATE_TENSORS), **meta}
    (folder / TRAIN_STATE_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True))


def load_train_state(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_train_state` wrote; checks the format and the tensors' SHA-256."""
    folder = Path(folder)
    js, ts = folder / TRAIN_STATE_JSON, folder / TRAIN_STATE_TENSORS
    if not js.is_file() or not ts.is_file():
        raise CheckpointError(f"checkpoint {folder}: no training state ({TRAIN_STATE_JSON} and "
                              f"{TRAIN_STATE_TENSORS}); only checkpoints written during training (last/) "
                              f"can be resumed")
    try:
        meta = json.loads(js.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {folder}: {TRAIN_STATE_JSON} is unreadable ({e})") from e
    if meta.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"checkpoint {folder}: {TRAIN_STATE_JSON} format {meta.get('format')!r} "
                              f"is not {TRAIN_STATE_FORMAT!r}")
    tensors = read_weights(folder, meta, file=TRAIN_STATE_TENSORS, digest_key="tensors_sha256",
                           recorded_in=TRAIN_STATE_JSON)
    return tensors, meta


def resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if (p / CONFIG).is_file():
        return p
    if p.name == CONFIG and p.is_file():
        return p.parent
    for folder in (p, p / "best", p / "final", p / "last"):
        if folder is not p and (folder / CONFIG).is_file():
            return folder
        copy = complete_copy(folder) if folder.parent.is_dir() else None
        if copy is not None:  # a write was killed between its renames: read the complete copy
            warnings.warn(f"checkpoint {folder} is missing (a write was interrupted); using its complete "
                          f"copy {copy}", stacklevel=2)
            return copy
    b = bundled_path(str(name_or_path))
    if b is not None:
        return b
    raise CheckpointError(
        f"no checkpoint at {name_or_path!r}: expected a folder with {CONFIG} and {WEIGHTS}, a run folder "
        f"with best/ or final/, or a bundled name ({', '.join(bundled_names()) or 'none installed'})"
    )


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: {CONFIG} is unreadable ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: {path / CONFIG} holds a JSON {type(meta).__name__}, "
                              f"not an object: not a metashot checkpoint config (re-create or download it)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


def _model_section(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta["config"]["model"]``, or an error naming the file and the missing key."""
    if meta.get("kind") == "rl-policy":
        raise CheckpointError(f"checkpoint {path} is a reinforcement-learning policy; use metashot rl eval")
    where = f"checkpoint {path}: {path / CONFIG}"
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where} has no 'config' object (the run's configuration); "
                              f"re-create the checkpoint")
    model = cfg.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{where} has no 'config.model' object (the model's algorithm and backbone); "
                              f"re-create the checkpoint")
    missing = [k for k in ("algorithm", "backbone") if k not in model]
    if missing:
        raise CheckpointError(f"{where}: 'config.model' lacks {', '.join(repr(k) for k in missing)}")
    return model


def read_weights(path: Path, meta: dict[str, Any], device: str | torch.device = "cpu",
                 file: str = WEIGHTS, digest_key: str = "weights_sha256",
                 recorded_in: str = CONFIG) -> dict[str, torch.Tensor]:
    """The tensors of ``path/file`` (the weights, or the training state's tensors) after checking them against
    the SHA-256 that ``meta[digest_key]`` (read from ``recorded_in``) records."""
    wfile = path / file
    if wfile.is_dir():
        raise CheckpointError(f"checkpoint {path}: {file} is a folder, not a file; re-create or re-download "
                              f"the checkpoint")
    if not wfile.is_file():
        raise CheckpointError(f"checkpoint {path}: {file} is missing")
    digest = sha256_file(wfile)
    if digest != meta.get(digest_key):
        raise CheckpointError(
            f"checkpoint {path}: {file} has SHA-256 {digest[:16]}... but {recorded_in} records "
            f"{str(meta.get(digest_key))[:16]}...; the file was modified or truncated. Re-create or "
            f"re-download it"
        )
    try:
        state = load_file(str(wfile), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {file} cannot be read ({e})") from e
    return state


def load_checkpoint(
    name_or_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MetaLearner, dict[str, Any]]:
    """Rebuild the learner of a checkpoint and load its weights; returns (learner in eval mode, meta)."""
    path = resolve(name_or_path)
    meta = read_meta(path)
    state = read_weights(path, meta, device)
    model_cfg = confined_model(path, meta, _model_section(path, meta))
    learner = create_learner(model_cfg, meta.get("learner_args"))
    ext_keys, ext_digests = external_state(learner)
    recorded = meta.get("external_weights", {})
    if ext_digests != recorded:
        for mod, digest in recorded.items():
            if ext_digests.get(mod) != digest:
                raise CheckpointError(
                    f"checkpoint {path}: the pretrained weights of {mod} "
                    f"({model_cfg.get('backbone_args')}) have digest {str(ext_digests.get(mod))[:16]}... "
                    f"but the checkpoint was made with "
                    f"{digest[:16]}...; install the weights it was made with (same package version or file)")
        raise CheckpointError(f"checkpoint {path}: it records pretrained weights {sorted(recorded)} but the "
                              f"rebuilt model has {sorted(ext_digests)}")
    declared = learner.state_dict()
    shapes = [f"{k}: {list(v.shape)} in {WEIGHTS}, {list(declared[k].shape)} in the model"
              for k, v in state.items() if k in declared and v.shape != declared[k].shape]
    if shapes:  # (torch's own message puts these on later lines, which one line would cut)
        raise CheckpointError(
            f"checkpoint {path}: weights do not match the model {model_cfg['algorithm']}/"
            f"{model_cfg['backbone']} described in {CONFIG}: {len(shapes)} tensor(s) of another shape, e.g. "
            f"{'; '.join(shapes[:3])}")
    cast = [(k, v.dtype, declared[k].dtype) for k, v in state.items() if k in declared
            and v.dtype != declared[k].dtype]
    if cast:  # load_state_dict would cast int8 or bool weights to float without a word
        k, got, want = cast[0]
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} holds {k!r} as {str(got).replace('torch.', '')} "
                              f"but the model {model_cfg['algorithm']}/{model_cfg['backbone']} declares "
                              f"{str(want).replace('torch.', '')} ({len(cast)} tensor(s) of another dtype); "
                              f"re-create the checkpoint with metashot")
    try:
        missing, unexpected = learner.load_state_dict(state, strict=not ext_keys)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path}: weights do not match the model {model_cfg['algorithm']}/"
            f"{model_cfg['backbone']} described in {CONFIG}: {' '.join(str(e).split())[:500]}"
        ) from e
    # (BatchNorm fills a missing num_batches_tracked itself, so the missing keys are a subset of ext_keys.)
    wrong = sorted(set(missing) - ext_keys)[:3] or sorted(unexpected)[:3]
    if wrong:
        raise CheckpointError(f"checkpoint {path}: weights do not match the model {model_cfg['algorithm']}/"
                              f"{model_cfg['backbone']} described in {CONFIG}: e.g. {wrong}")
    learner.to(device).eval()
    return learner, meta
