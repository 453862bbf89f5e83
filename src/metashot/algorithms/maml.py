"""MAML (second and first order), Meta-SGD and ANIL: inner-loop gradient steps from a meta-learned start."""

from __future__ import annotations

from typing import Any

from torch import nn

from metashot.algorithms.base import register
from metashot.algorithms.inner_loop import LOSSES, InnerLoopLearner  # noqa: F401 (LOSSES: re-exported)


@register("maml")
class MAML(InnerLoopLearner):
    """Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017).

    theta'_i = theta - alpha * grad_theta L_{T_i}^{support}(f_theta) (Eq. 1, ``inner_steps`` times); the
    meta-objective min_theta sum_i L_{T_i}^{query}(f_{theta'_i}) (Eq. 2), second order unless
    ``first_order``. The inner loop, its arguments and its fast paths are :class:`InnerLoopLearner`'s.
    """


@register("metasgd")
class MetaSGD(MAML):
    """Meta-SGD (Li, Zhou, Chen & Li, 2017).

    The inner update is theta' = theta - alpha o grad L^{support}(theta) (Eq. 3 of the paper) with alpha a
    learnable vector of the same shape as theta (elementwise product o), meta-learned jointly with theta on
    the query loss. One step in the paper. Same arguments as :class:`MAML`; ``inner_lr`` initialises alpha.
    """

    def __init__(self, backbone: nn.Module, **kwargs: Any) -> None:
        kwargs.setdefault("learn_inner_lr", True)
        if not kwargs["learn_inner_lr"]:
            raise ValueError("MetaSGD: learn_inner_lr must be True (use algorithm 'maml' for a fixed alpha)")
        super().__init__(backbone, **kwargs)


@register("anil")
class ANIL(MAML):
    """ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

    MAML whose inner loop adapts only the head: theta'_head = theta_head - alpha * grad_{theta_head}
    L^{support}(theta_body, theta_head); the body is shared across tasks and meta-learned through the query
    loss like everything else. The head is the parameters named ``head_prefix*`` (``head.`` in the built-in
    nets). Same arguments as :class:`MAML`.
    """

    def __init__(self, backbone: nn.Module, **kwargs: Any) -> None:
        kwargs.setdefault("adapt", "head")
        if kwargs["adapt"] != "head":
            raise ValueError("ANIL: adapt must be 'head' (use algorithm 'maml' to adapt every parameter)")
        super().__init__(backbone, **kwargs)
