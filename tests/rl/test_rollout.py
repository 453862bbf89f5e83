"""Discounted returns with masks and rllab's linear feature baseline."""

from __future__ import annotations

import numpy as np
import torch

from metashot.rl.rollout import baseline_features, discounted_returns, fit_linear_baseline


def test_discounted_returns_and_mask():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = discounted_returns(r, m, 0.5)
    assert torch.allclose(out, torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]))


def test_linear_baseline_recovers_linear_targets_and_matches_lstsq():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(3, 4, 6, 2, generator=g, dtype=torch.float64)
    feats = baseline_features(obs)
    assert feats.shape == (3, 4, 6, 2 + 2 + 3 + 1)
    assert torch.allclose(feats[0, 0, :, 4], torch.arange(6, dtype=torch.float64) / 100)
    w = torch.randn(3, 8, generator=g, dtype=torch.float64)
    y = torch.einsum("tnhf,tf->tnh", feats, w)
    mask = torch.ones(3, 4, 6, dtype=torch.float64)
    fitted = fit_linear_baseline(feats, y, mask, reg=1e-10)
    assert torch.allclose(fitted, y, atol=1e-6)
    # noisy targets with masked steps: equals the (ridge) least squares of the valid rows
    y2 = y + torch.randn(y.shape, generator=g, dtype=torch.float64)
    mask[:, :, 4:] = 0
    fitted = fit_linear_baseline(feats, y2, mask, reg=1e-5)
    x = feats[1][mask[1].bool()].numpy()
    sol = np.linalg.solve(x.T @ x + 1e-5 * np.eye(8), x.T @ y2[1][mask[1].bool()].numpy())
    np.testing.assert_allclose(fitted[1].numpy(), feats[1].numpy() @ sol, rtol=1e-6, atol=1e-8)
