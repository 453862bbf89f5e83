"""The diagonal Gaussian policy's log-density and KL against torch.distributions."""

from __future__ import annotations

import torch

from metashot.rl.policy import gaussian_kl, gaussian_log_prob


def test_gaussian_log_prob_and_kl():
    m0, s0 = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.1, -0.4]])
    m1, s1 = torch.tensor([[0.0, 0.5]]), torch.tensor([[-0.2, 0.3]])
    a = torch.tensor([[1.0, 0.0]])
    d0 = torch.distributions.Normal(m0, s0.exp())
    d1 = torch.distributions.Normal(m1, s1.exp())
    assert torch.allclose(gaussian_log_prob(m0, s0, a), d0.log_prob(a).sum(-1))
    assert torch.allclose(gaussian_kl(m0, s0, m1, s1), torch.distributions.kl_divergence(d0, d1).sum(-1))
