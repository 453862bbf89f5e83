"""benchmarks/calibration.py: the temperature fit and the expected calibration error, on synthetic logits."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

_spec = importlib.util.spec_from_file_location(
    "calibration", Path(__file__).resolve().parents[1] / "benchmarks" / "calibration.py")
calibration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calibration)


def test_fit_temperature_recovers_the_temperature_of_overconfident_logits():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=g).squeeze(1)
    t = calibration.fit_temperature(true_logits * 3.0, labels)  # 3x overconfident
    assert abs(t - 3.0) < 0.3


def test_ece_of_calibrated_and_saturated_probabilities():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 20000)
    proba = np.stack([conf, 1 - conf], 1)
    labels = np.where(rng.uniform(size=conf.size) < conf, 0, 1)  # right with probability conf
    assert calibration.ece(proba, labels, 15) < 0.02
    saturated = np.stack([np.ones(100), np.zeros(100)], 1)
    labels = np.r_[np.zeros(80, int), np.ones(20, int)]  # 80% right, 100% sure
    assert abs(calibration.ece(saturated, labels, 15) - 0.2) < 1e-9
