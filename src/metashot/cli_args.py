"""The argument types and defaults of the ``metashot`` command (argparse ``type=`` functions): each refuses a
bad value with a message that argparse prefixes with the flag."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any


def _parsed(text: str, kind: type, expected: str) -> Any:
    """``kind(text)``, or the argparse error "expected <expected>, got <text>"."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _int_at_least(text: str, low: int, must: str) -> int:
    v = _parsed(text, int, f"an integer >= {low}")
    if v < low:
        raise argparse.ArgumentTypeError(f"{must}, got {v}")
    return v


def seed(text: str) -> int:
    """argparse type: a seed, an integer >= 0 (argparse names the flag in the error)."""
    return _int_at_least(text, 0, "must be an integer >= 0")


def threshold(text: str) -> float:
    """argparse type: a finite number in [-1, 1] (a confidence in [0, 1] or a cosine score in [-1, 1])."""
    v = _parsed(text, float, "a number")
    if not -1.0 <= v <= 1.0:  # (also refuses nan and inf)
        raise argparse.ArgumentTypeError(f"must be a number in [-1, 1] (a confidence or a cosine score), "
                                         f"got {text!r}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 or a negative count is an error, never "use the default")."""
    return _int_at_least(text, 1, "must be >= 1")


def dirichlet(text: str) -> float:
    """``dirichlet:ALPHA`` -> ALPHA (a positive number)."""
    kind, _, value = text.partition(":")
    try:
        alpha = float(value)
    except ValueError:
        alpha = float("nan")
    if kind != "dirichlet" or not alpha > 0 or alpha == float("inf"):
        raise argparse.ArgumentTypeError(f"expected dirichlet:ALPHA with ALPHA > 0 (e.g. dirichlet:2), got "
                                         f"{text!r}")
    return alpha



FOLDER_MAX_WAYS = 20  # eval of a user's folder without --ways: the folder's class count, up to this
EVAL_PASS_IMAGES = 8000  # eval: at most this many images per forward pass (episodes x ways x (shots+queries))


def _split_classes(dataset: str, split: str, root: str | None) -> int | None:
    """The number of classes of a split when it is known without decoding a single image (the dataset's
    registered ``split_classes``), else None."""
    from metashot.data import DATASETS

    count = DATASETS.entry(dataset).split_classes if dataset in DATASETS else None
    if count is not None:
        with contextlib.suppress(ValueError, OSError):
            return int(count(split, root))
    return None


def eval_limits(a: argparse.Namespace) -> None:
    """Bound ``metashot eval`` before any data is read: ``--ways`` beyond the split's classes is refused
    naming that number, and the episodes per forward pass (``--meta-batch``, when not given) are lowered so
    one pass holds at most EVAL_PASS_IMAGES images (episodes do not depend on it: the same numbers)."""
    if a.ways is None:
        return
    from metashot.checkpoint import CheckpointError, read_meta, resolve

    try:
        cfg = read_meta(resolve(a.checkpoint)).get("config") or {}
    except (CheckpointError, OSError, ValueError):
        return  # loading the checkpoint reports what is wrong with it
    data, ev = cfg.get("data") or {}, cfg.get("eval") or {}
    dataset, split = a.dataset or data.get("dataset"), a.split or data.get("test_split")
    if isinstance(dataset, str) and isinstance(split, str):
        n = _split_classes(dataset, split, a.root or data.get("root"))
        if n is not None and a.ways > n:
            raise ValueError(f"--ways {a.ways}: {dataset} split {split!r} has {n} classes; give --ways "
                             f"{n} or fewer")
    shots = a.shots if a.shots is not None else ev.get("shots", 1)
    queries = a.queries if a.queries is not None else ev.get("queries", 15)
    per_episode = a.ways * (int(shots) + int(queries))
    if a.meta_batch is None and isinstance(ev.get("meta_batch", 16), int):
        a.meta_batch = max(1, min(ev.get("meta_batch", 16), EVAL_PASS_IMAGES // per_episode))


def split_ways(dataset: str | None, split: str | None, root: str | None) -> int | None:
    """The default ways of ``eval`` on a dataset registered with ``ways_from_split`` (a user's folder): every
    class of the split, up to FOLDER_MAX_WAYS; None for other datasets (the checkpoint's own), or when the
    folder is not there (the loader's error names it)."""
    from pathlib import Path

    from metashot.data import DATASETS

    if dataset not in DATASETS or not DATASETS.entry(dataset).ways_from_split:
        return None
    path = Path(split or "")
    path = Path(root) / path if root and not path.is_absolute() else path
    if split is None or not path.is_dir():
        return None
    n = _split_classes(dataset, str(split), root) or 0
    if n == 1:
        raise ValueError(f"--split {path}: one class subfolder; an episode needs at least 2 classes")
    return min(n, FOLDER_MAX_WAYS) if n else None


def set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def exit_code(summary: dict[str, Any]) -> int:
    """128 + the signal that stopped a training (as a shell reports a killed command), else 0."""
    sig = summary.get("signal")
    return 128 + sig if isinstance(sig, int) else 0
