"""The scoring of :class:`~metashot.algorithms.simpleshot.SimpleShot` in NumPy, for :mod:`metashot.lite`.

The same arithmetic as :mod:`metashot.nn.feature_maps` (support centring, L2 normalisation),
:mod:`metashot.nn.prototypes` (class means, expanded squared distances clamped at 0), the nearest-class-mean
and soft k-means heads and :meth:`SimpleShot.known_scores` / :meth:`HeadPredictor.scores_embedded`, in
float32; tests/test_lite.py holds each to its torch original. ``rt`` is a saved classifier's checked
``runtime`` record (:func:`metashot.lite.check_runtime`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

UNKNOWN = "unknown"  # the label of photos of none of the support classes (predict(..., unknown=True))


def l2n(z: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (as torch.nn.functional.normalize: the norm floored at 1e-12)."""
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), np.float32(1e-12))


def power_transform(z: np.ndarray, power: float | None) -> np.ndarray:
    """(max(z, 0) + 1e-6) ** power (metashot.nn.feature_maps.power_transform); z itself when power is None."""
    return z if power is None else (np.maximum(z, 0) + np.float32(1e-6)) ** np.float32(power)


def class_sums(z: np.ndarray, y: np.ndarray, ways: int) -> tuple[np.ndarray, np.ndarray]:
    """(class sums [N, D], counts [N, 1]) of rows z [S, D] with labels y [S]."""
    onehot = np.eye(ways, dtype=z.dtype)[y]
    return onehot.T @ z, onehot.sum(0)[:, None]


def distance_logits(q: np.ndarray, p: np.ndarray, scale: float) -> np.ndarray:
    """-scale * ||q - p_k||^2 (expanded, clamped at 0)."""
    d = (q * q).sum(-1, keepdims=True) - 2 * q @ p.T + (p * p).sum(-1)[None]
    return np.float32(-scale) * np.maximum(d, 0)


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def head_scores(zs: np.ndarray, ys: np.ndarray, zq: np.ndarray, rt: dict[str, Any],
                transductive: bool | None) -> np.ndarray:
    """Scores [M, N] of queries zq [M, D] (SimpleShot.scores): centring, then the head, or nearest class
    mean for a single query or ``transductive=False``."""
    ways = int(ys.max()) + 1
    if rt["centre"] == "support":
        m = zs.mean(0, keepdims=True)
        ts, tq = l2n(zs - m), l2n(zq - m)
    else:
        ts, tq = zs, zq
    head_transductive = rt["head"] == "soft_kmeans"
    use = rt["transductive"] if transductive is None else (transductive and head_transductive)
    sums, counts = class_sums(ts, ys, ways)
    p = sums / counts
    if not head_transductive:
        return distance_logits(tq, p, rt["head_args"]["scale"])
    if not (use and len(tq) > 1):
        return distance_logits(tq, p, rt["inductive_scale"])
    scale = rt["head_args"]["scale"]
    for _ in range(int(rt["head_args"]["steps"])):
        w = softmax(distance_logits(tq, p, scale))
        p = (sums + w.T @ tq) / (counts + w.sum(0)[:, None])
    return distance_logits(tq, p, scale)


def known_scores(zs: np.ndarray, ys: np.ndarray, zq: np.ndarray) -> np.ndarray:
    """The cosine of each query to its nearest class mean, centred on the support and queries together
    (SimpleShot.known_scores), [M]."""
    m = np.concatenate([zs, zq]).mean(0, keepdims=True)
    sums, counts = class_sums(l2n(zs - m), ys, int(ys.max()) + 1)
    return (l2n(l2n(zq - m)) @ l2n(sums / counts).T).max(-1)


def scores_embedded(zs: np.ndarray, ys: np.ndarray, zq: np.ndarray, rt: dict[str, Any],
                    transductive: bool | None, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [M, N], known scores [M]) as HeadPredictor.scores_embedded: with ``threshold``, queries whose
    known score is below it are scored inductively and kept out of the transductive batch."""
    known = known_scores(zs, ys, zq)
    if threshold is None:
        return head_scores(zs, ys, zq, rt, transductive), known
    keep = known >= threshold
    out = head_scores(zs, ys, zq, rt, False)
    if keep.any():
        out[keep] = head_scores(zs, ys, zq[keep], rt, transductive)
    return out, known


def check_unknown(threshold: float | None, classes: Any, source: str | None, has_score: bool = True) -> None:
    """The one-line errors of ``predict(..., unknown=True)``: a model without a calibrated threshold (or a
    known-class score), or a support class named 'unknown'."""
    if threshold is None or not has_score:
        raise ValueError(f"unknown=True: model {source or '(in memory)'} has no calibrated 'unknown' "
                         f"threshold (only photo models with a known-class score do, e.g. `photos`); leave "
                         f"unknown out")
    if UNKNOWN in list(classes):
        raise ValueError(f"unknown=True: a support class is named {UNKNOWN!r}, the label of photos of none "
                         f"of the classes; rename that class")
