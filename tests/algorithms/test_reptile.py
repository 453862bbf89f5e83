"""Reptile (Nichol et al. 2018): the task weights and the outer update, checked by hand."""

from __future__ import annotations

import pytest
import torch

from metashot.algorithms.reptile import Reptile
from metashot.data.episodes import EpisodeBatch

from ._helpers import _Scalar

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("vectorized", [False, True])
def test_reptile_update_hand_computed(vectorized: bool) -> None:
    """Reptile, y = w x + b (w=1, b=0), inner SGD lr 0.1, 2 steps on one point (x=1, y=3): step 1 grads
    (-4, -4) -> (1.4, 0.4); step 2 residual -1.2, grads (-2.4, -2.4) -> phi = (1.64, 0.64). A second task with
    point (x=1, y=1): grads (0, 0) -> phi = (1, 0). One SGD step of size eps = 0.5 on the surrogate gives
    theta + eps (mean phi - theta) = (1 + 0.5 * 0.32, 0 + 0.5 * 0.32) = (1.16, 0.16)."""
    learner = Reptile(_Scalar(1.0, 0.0), inner_lr=0.1, inner_steps=2, loss="mse",
                      vectorized=vectorized).double()
    t = lambda v: torch.tensor(v, dtype=torch.float64).view(2, -1, 1)  # noqa: E731
    batch = EpisodeBatch(t([1.0, 1.0]), t([3.0, 1.0]), t([0.0, 0.0]), t([0.0, 0.0]), torch.zeros(2, 1),
                         1, 1, 1)
    phi = learner.task_weights(batch.support_x, batch.support_y)
    assert torch.allclose(phi["head.weight"].view(-1), torch.tensor([1.64, 1.0], dtype=torch.float64))
    assert torch.allclose(phi["head.bias"].view(-1), torch.tensor([0.64, 0.0], dtype=torch.float64))
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    loss, _ = learner.meta_loss(batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert float(learner.backbone.head.weight.detach()) == pytest.approx(1.16, rel=1e-12)
    assert float(learner.backbone.head.bias.detach()) == pytest.approx(0.16, rel=1e-12)
