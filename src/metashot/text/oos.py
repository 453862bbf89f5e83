"""Out-of-scope detection by a confidence threshold (Larson et al., EMNLP 2019, "oos-threshold" baselines).

A query is rejected as out-of-scope when the few-shot classifier's confidence, the largest softmax probability
max_k p(k | x), is below a threshold tau; otherwise it gets the arg-max intent. Reported as Larson et al. do:
in-scope accuracy (an in-scope query counts as correct only if it is accepted *and* given its intent) and
out-of-scope recall (the fraction of out-of-scope queries rejected). tau is chosen on validation data, never
on the test set (:func:`choose_threshold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

REJECT = -1


def predict_with_rejection(proba: np.ndarray, threshold: float) -> np.ndarray:
    """proba [n, C] (rows sum to 1) -> int64 [n]: the arg-max class, or ``REJECT`` (-1) if max < threshold."""
    proba = np.asarray(proba)
    if proba.ndim != 2:
        raise ValueError(f"predict_with_rejection: proba must be [n, classes], got shape {proba.shape}")
    pred = proba.argmax(1).astype(np.int64)
    pred[proba.max(1) < threshold] = REJECT
    return pred


def oos_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """In-scope accuracy and out-of-scope recall/precision, in percent.

    Args:
        pred: int [n], class index or ``REJECT``.
        truth: int [n], class index or ``REJECT`` for an out-of-scope query.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"oos_metrics: {pred.shape} predictions but {truth.shape} labels")
    ins, oos = truth != REJECT, truth == REJECT
    if not ins.any() or not oos.any():
        raise ValueError(f"oos_metrics: need both in-scope ({int(ins.sum())}) and out-of-scope "
                         f"({int(oos.sum())}) queries")
    rejected = pred == REJECT
    return {
        "in_scope_acc": round(100 * float((pred[ins] == truth[ins]).mean()), 2),
        "oos_recall": round(100 * float(rejected[oos].mean()), 2),
        "oos_precision": round(100 * float(oos[rejected].mean()), 2) if rejected.any() else 0.0,
        "n_in_scope": int(ins.sum()), "n_oos": int(oos.sum()),
    }


def choose_threshold(proba: np.ndarray, truth: np.ndarray,
                     grid: Sequence[float] | None = None) -> dict[str, Any]:
    """The threshold maximising (in-scope accuracy + out-of-scope recall) / 2 on validation data.

    The balanced criterion keeps a validation set with few out-of-scope queries (CLINC150: 100 of 3,100) from
    choosing tau = 0. Ties go to the smallest threshold. Returns ``threshold`` and its validation metrics.
    """
    proba = np.asarray(proba)
    grid = np.unique(np.round(proba.max(1), 4)) if grid is None else np.asarray(grid, dtype=np.float64)
    best: dict[str, Any] | None = None
    for tau in np.sort(grid):
        m = oos_metrics(predict_with_rejection(proba, float(tau)), truth)
        score = (m["in_scope_acc"] + m["oos_recall"]) / 2
        if best is None or score > best["score"]:
            best = {"threshold": float(tau), "score": round(score, 2), **m}
    assert best is not None
    return best
