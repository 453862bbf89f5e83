"""Fine-tuned cosine classifiers on the features: inductive (a linear probe on the support set, as
easyfsl's Finetune) and transductive (Dhillon, Chaudhari, Ravichandran & Soatto, ICLR 2020, "A baseline for
few-shot image classification", eq. 3: support cross-entropy plus the Shannon entropy of the query
predictions)."""

from __future__ import annotations

import torch

from metashot.algorithms.heads import Head, ce, cosine, fit_classifier, register_head, shannon


@register_head("finetune")
class Finetune(Head):
    """Inductive: a cosine classifier, logits_k(z) = s cos(z, w_k), W started at the support means and
    fitted by Adam to the support cross-entropy only.

    Args:
        scale: s (fixed, as a softmax temperature).
        steps, lr: Adam iterations and step size.
    """

    def __init__(self, scale: float = 10.0, steps: int = 100, lr: float = 1e-3) -> None:
        super().__init__(scale=scale, steps=steps, lr=lr)
        self.scale, self.steps, self.lr = float(scale), int(steps), float(lr)

    def logits(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.scale * cosine(z, w)

    def loss(self, ls: torch.Tensor, ys: torch.Tensor, lq: torch.Tensor | None) -> torch.Tensor:
        return ce(ls, ys)

    def __call__(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        w = fit_classifier(zs, ys, zq if self.transductive else None, ways, self.loss, self.steps, self.lr,
                           self.logits)
        return self.logits(zq, w)


@register_head("transductive_finetune")
class TransductiveFinetune(Finetune):
    """Transductive fine-tuning (Dhillon et al. 2020, eq. 3), here of the classifier on frozen features:

        min_W  CE(support) + (1/M) sum_j H(p(. | q_j)),   p(k | z) = softmax_k(s cos(z, w_k)).

    Args: as :class:`Finetune`, plus ``ent``, the weight of the entropy term (the paper: 1).
    """

    transductive = True

    def __init__(self, scale: float = 10.0, steps: int = 100, lr: float = 1e-3, ent: float = 1.0) -> None:
        super().__init__(scale=scale, steps=steps, lr=lr)
        self.args["ent"] = ent
        self.ent = float(ent)

    def loss(self, ls: torch.Tensor, ys: torch.Tensor, lq: torch.Tensor | None) -> torch.Tensor:
        assert lq is not None
        return ce(ls, ys) + self.ent * shannon(lq.softmax(-1)).mean(-1)
