"""TIM-GD and alpha-TIM: transductive information maximisation (Boudiaf et al., NeurIPS 2020, eq. 6 and
the gradient-descent variant TIM-GD; Veilleux et al., NeurIPS 2021, "Realistic evaluation of transductive
few-shot learning", alpha-TIM)."""

from __future__ import annotations

import torch

from metashot.algorithms.heads import Head, ce, fit_classifier, register_head, shannon  # noqa: F401 (re-exported)


def tsallis(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """The alpha-entropy H_a(p) = (1 - sum_k p_k^a) / (a - 1); Shannon's as a -> 1."""
    return (1 - p.pow(alpha).sum(-1)) / (alpha - 1)


@register_head("tim")
class TIM(Head):
    """Transductive information maximisation, TIM-GD (Boudiaf et al. 2020, eq. 6):

        min_W  lambda * CE(support) - (H(Y_Q) - alpha_c * H(Y_Q | X_Q)),

    p(k | z) = softmax_k(-tau/2 ||z - w_k||^2), H(Y_Q) the entropy of the mean query prediction (the
    marginal: pushes the batch toward using every class), H(Y_Q | X_Q) the mean entropy of each query's
    prediction (confident answers). W starts at the support means; Adam for ``steps`` steps. With
    ``alpha`` set, the two entropies are alpha-entropies (alpha-TIM, Veilleux et al. 2021), which weigh the
    marginal term less when the batch's classes are imbalanced.

    Args:
        lam: lambda, the weight of the support cross-entropy (the paper: 0.1).
        cond: alpha_c, the weight of the conditional entropy (the paper: 0.1).
        marg: the weight of the marginal entropy (the paper: 1).
        tau: the temperature tau of the distance softmax (the paper: 15).
        steps, lr: Adam iterations and step size.
        alpha: None for Shannon entropies (TIM), else the order of the alpha-entropies (alpha-TIM).
    """

    transductive = True

    def __init__(self, lam: float = 0.1, cond: float = 0.1, marg: float = 1.0, tau: float = 15.0,
                 steps: int = 200, lr: float = 1e-3, alpha: float | None = None) -> None:
        super().__init__(lam=lam, cond=cond, marg=marg, tau=tau, steps=steps, lr=lr, alpha=alpha)
        self.lam, self.cond, self.marg, self.tau = float(lam), float(cond), float(marg), float(tau)
        self.steps, self.lr = int(steps), float(lr)
        if alpha is not None and not (alpha > 0 and alpha != 1):
            raise ValueError(f"alpha-TIM: alpha must be positive and not 1, got {alpha}")
        self.alpha = None if alpha is None else float(alpha)

    def logits(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        d = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ w.transpose(-1, -2) + w.pow(2).sum(-1).unsqueeze(-2))
        return -self.tau / 2 * d

    def entropy(self, p: torch.Tensor) -> torch.Tensor:
        return shannon(p) if self.alpha is None else tsallis(p, self.alpha)

    def loss(self, ls: torch.Tensor, ys: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        pq = lq.softmax(-1)  # [T, M, N]
        marginal = self.entropy(pq.mean(-2))  # [T]
        conditional = self.entropy(pq).mean(-1)  # [T]
        return self.lam * ce(ls, ys) - self.marg * marginal + self.cond * conditional

    def __call__(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        w = fit_classifier(zs, ys, zq, ways, self.loss, self.steps, self.lr, self.logits)
        return self.logits(zq, w)


@register_head("alpha_tim")
class AlphaTIM(TIM):
    """alpha-TIM (Veilleux et al. 2021): TIM with alpha-entropies (see :class:`TIM`); alpha defaults to 2."""

    def __init__(self, alpha: float = 2.0, **kw: float) -> None:
        super().__init__(alpha=alpha, **kw)  # type: ignore[arg-type]
