"""Logistic regression fitted on each support set: a training-free few-shot baseline (linear probe).

It has nothing to meta-train, so the shared evaluator and the full-way protocol run it exactly like any
trained learner.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import Batch, MetaLearner, Predictor, register


@register("logreg")
class LogisticRegression(MetaLearner):
    """Multinomial logistic regression fitted on each support set (linear-probe baseline, Tian et al. 2020).

    Minimises (1/S) sum_i CE(W f(x_i) + b, y_i) + (l2 / 2) ||W||^2 over W [N, D], b [N] with L-BFGS from zero,
    on L2-normalised features f (``normalize``). Deterministic: one support set always gives one classifier.

    Args:
        l2: ridge penalty on W (inverse of scikit-learn's C times S).
        steps: L-BFGS iterations.
    """

    adapt_needs_grad = True  # adapt() runs an optimiser, so evaluation must not disable autograd

    def __init__(self, backbone: nn.Module | None = None, l2: float = 1e-3, steps: int = 100,
                 normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else nn.Identity()
        self.l2, self.steps, self.normalize = float(l2), int(steps), bool(normalize)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone(x).flatten(1)
        return F.normalize(z, dim=-1) if self.normalize else z

    def fit_weights(self, z: torch.Tensor, y: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve T independent problems at once: z [T, S, D] features, y [T, S] -> W [T, N, D], b [T, N].

        The objective is the sum over tasks of each task's objective; it is separable, so its minimiser is
        every task's own minimiser and one L-BFGS run solves the whole meta-batch.
        """
        with torch.enable_grad():
            z = z.detach().double()
            T, _, D = z.shape
            w = torch.zeros(T, ways, D, dtype=z.dtype, device=z.device, requires_grad=True)
            b = torch.zeros(T, ways, dtype=z.dtype, device=z.device, requires_grad=True)
            opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=self.steps, tolerance_grad=1e-7,
                                    tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                opt.zero_grad()
                logits = torch.einsum("tsd,tnd->tsn", z, w) + b[:, None, :]
                ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(T, -1).mean(1)
                loss = (ce + 0.5 * self.l2 * w.pow(2).sum((1, 2))).sum()
                loss.backward()
                return loss

            opt.step(closure)
        return w.detach().float(), b.detach().float()

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """support_x [S, D], support_y [S] (0..N-1) -> predictor(query_x [M, D]) -> logits [M, N]."""
        ways = int(support_y.max()) + 1
        w, b = self.fit_weights(self._features(support_x)[None], support_y[None], ways)
        weight, bias = w[0], b[0]

        def predictor(query_x: torch.Tensor) -> torch.Tensor:
            return self._features(query_x).float() @ weight.T + bias

        return predictor

    def predict_batch(self, batch: Batch) -> torch.Tensor:
        """Query logits of every task [T, N*Q, N], all support sets fitted in one L-BFGS run."""
        T, S = batch.support_x.shape[:2]
        zs = self._features(batch.support_x.flatten(0, 1)).view(T, S, -1)
        w, b = self.fit_weights(zs, batch.support_y, batch.ways)
        zq = self._features(batch.query_x.flatten(0, 1)).view(T, batch.query_x.shape[1], -1).float()
        return (torch.einsum("tmd,tnd->tmn", zq, w) + b[:, None, :]).detach()

    def config_dict(self) -> dict[str, Any]:
        return {"l2": self.l2, "steps": self.steps, "normalize": self.normalize}
