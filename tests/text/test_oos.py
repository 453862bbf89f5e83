"""Out-of-scope rejection by a confidence threshold: predictions, Larson et al.'s metrics, the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from metashot.text.oos import REJECT, choose_threshold, oos_metrics, predict_with_rejection

PROBA = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.6, 0.4], [0.5, 0.5]])


def test_predict_with_rejection() -> None:
    assert predict_with_rejection(PROBA, 0.0).tolist() == [0, 1, 0, 0, 0]
    assert predict_with_rejection(PROBA, 0.58).tolist() == [0, 1, REJECT, 0, REJECT]
    assert predict_with_rejection(PROBA, 0.95).tolist() == [REJECT] * 5
    with pytest.raises(ValueError, match="proba must be"):
        predict_with_rejection(np.ones(3), 0.5)


def test_metrics_by_hand() -> None:
    truth = np.array([0, 1, 1, REJECT, REJECT])
    pred = np.array([0, REJECT, 1, 0, REJECT])
    m = oos_metrics(pred, truth)
    # in-scope: 0 correct, 1 rejected (wrong), 1 correct -> 2/3; oos: 1 of 2 rejected; rejected: 1 of 2 is oos
    assert m["in_scope_acc"] == pytest.approx(66.67)
    assert m["oos_recall"] == 50.0 and m["oos_precision"] == 50.0
    with pytest.raises(ValueError, match="need both"):
        oos_metrics(pred[:3], truth[:3])


def test_choose_threshold_balances_and_prefers_smallest() -> None:
    truth = np.array([0, 1, REJECT, 0, REJECT])
    best = choose_threshold(PROBA, truth)
    # Any tau in (0.55, 0.6] rejects both oos rows (0.55, 0.5) and keeps the in-scope rows right: score 100;
    # of the candidate thresholds (the confidences) 0.6 is the smallest that does it.
    assert best["score"] == 100.0 and best["in_scope_acc"] == 100.0 and best["oos_recall"] == 100.0
    assert best["threshold"] == pytest.approx(0.6)
    only_low = choose_threshold(PROBA, truth, grid=[0.0, 0.3])
    assert only_low["threshold"] == 0.0 and only_low["oos_recall"] == 0.0
