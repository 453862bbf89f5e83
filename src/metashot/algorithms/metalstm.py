"""Meta-LSTM: an LSTM that learns to train the learner network (Ravi & Larochelle, ICLR 2017)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import MetaLearner, Predictor, register
from metashot.nn.backbones import output_dim
from metashot.nn.functional import batch_stats_only, functional_forward


def preprocess_gradient(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al. 2016 (Appendix A) input preprocessing: magnitude and sign on separate channels.

        x -> (log|x| / p, sign(x))   if |x| >= exp(-p)
             (-1, exp(p) * x)         otherwise

    Gradients and losses span many orders of magnitude; this keeps each channel in a range an LSTM can read.
    Shapes: x [*] -> [*, 2].
    """
    if p <= 0:
        raise ValueError(f"preprocess_gradient: p must be > 0, got {p}")
    thresh = math.exp(-p)
    big = x.abs() >= thresh
    # clamp before log so neither branch produces -inf (whose gradient would be NaN under torch.where)
    log_part = torch.where(big, x.abs().clamp_min(thresh).log() / p, torch.full_like(x, -1.0))
    sign_part = torch.where(big, x.sign(), math.exp(p) * x)
    return torch.stack([log_part, sign_part], dim=-1)


class MetaLSTMCell(nn.Module):
    """The update cell of Ravi & Larochelle 2017 (Eq. 2): its cell state is the learner's parameters.

        f_t = sigmoid(W_F . [h_t, theta_{t-1}, f_{t-1}] + b_F)         learned weight decay
        i_t = sigmoid(W_I . [h_t, theta_{t-1}, i_{t-1}] + b_I)         learned learning rate
        theta_t = c_t = f_t * c_{t-1} + i_t * (-grad_t)

    applied to every coordinate of the learner independently with shared weights; ``h_t`` [P, H] is the
    first LSTM layer's output for each coordinate (it reads the preprocessed gradient and loss). The biases
    are initialised as in the paper by default: b_F ~ U(4, 6) so that f starts near 1 (no decay) and
    b_I ~ U(-5, -4) so that i starts small (a small learning rate, about 0.01); ``forget_bias_init`` and
    ``input_bias_init`` ([low, high]) change the ranges.
    """

    def __init__(self, hidden_size: int, forget_bias_init: tuple[float, float] = (4.0, 6.0),
                 input_bias_init: tuple[float, float] = (-5.0, -4.0)) -> None:
        super().__init__()
        for name, r in (("forget_bias_init", forget_bias_init), ("input_bias_init", input_bias_init)):
            if len(r) != 2 or not r[0] <= r[1]:
                raise ValueError(f"MetaLSTMCell: {name} must be [low, high] with low <= high, got {list(r)}")
        self.hidden_size = hidden_size
        self.w_forget = nn.Parameter(torch.empty(hidden_size + 2).uniform_(-0.01, 0.01))
        self.b_forget = nn.Parameter(torch.empty(1).uniform_(*map(float, forget_bias_init)))
        self.w_input = nn.Parameter(torch.empty(hidden_size + 2).uniform_(-0.01, 0.01))
        self.b_input = nn.Parameter(torch.empty(1).uniform_(*map(float, input_bias_init)))

    def forward(self, h: torch.Tensor, theta: torch.Tensor, grad: torch.Tensor, f_prev: torch.Tensor,
                i_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [P, H], theta / grad / f_prev / i_prev [P] -> (theta_t, f_t, i_t), each [P]."""
        H = self.hidden_size
        hw_f = h @ self.w_forget[:H]
        hw_i = h @ self.w_input[:H]
        f = torch.sigmoid(hw_f + theta * self.w_forget[H] + f_prev * self.w_forget[H + 1] + self.b_forget)
        i = torch.sigmoid(hw_i + theta * self.w_input[H] + i_prev * self.w_input[H + 1] + self.b_input)
        return f * theta + i * (-grad), f, i


class MetaLSTMOptimizer(nn.Module):
    """The two-layer coordinate-wise meta-learner of Ravi & Larochelle 2017 (Section 3.2 and Appendix).

    Layer 1 is a standard LSTM over the preprocessed inputs [pre(grad_t), pre(loss_t)] (4 numbers per
    coordinate); layer 2 is :class:`MetaLSTMCell`, whose cell state is the learner's parameters. All weights
    are shared across the P coordinates, which form the LSTM's batch dimension.

    State: (h1 [P, H], c1 [P, H], f_prev [P], i_prev [P]); :meth:`initial_state` gives zeros.
    """

    def __init__(self, hidden_size: int = 20, preprocess_p: float = 10.0,
                 forget_bias_init: tuple[float, float] = (4.0, 6.0),
                 input_bias_init: tuple[float, float] = (-5.0, -4.0)) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.preprocess_p = preprocess_p
        self.lstm = nn.LSTMCell(4, hidden_size)
        self.cell = MetaLSTMCell(hidden_size, forget_bias_init, input_bias_init)
        self.forget_bias_init = [float(v) for v in forget_bias_init]
        self.input_bias_init = [float(v) for v in input_bias_init]

    def initial_state(self, num_coords: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = like.new_zeros(num_coords, self.hidden_size)
        g = like.new_zeros(num_coords)
        return z, z, g, g

    def forward(self, theta: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor,
                state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One update. theta, grad [P]; loss a scalar; state as above -> (theta_t [P], new state)."""
        h1, c1, f_prev, i_prev = state
        pre_loss = preprocess_gradient(loss.reshape(1), self.preprocess_p).expand(grad.shape[0], 2)
        x = torch.cat([preprocess_gradient(grad, self.preprocess_p), pre_loss], dim=1)
        h1, c1 = self.lstm(x, (h1, c1))
        theta, f, i = self.cell(h1, theta, grad, f_prev, i_prev)
        return theta, (h1, c1, f, i)


@register("metalstm")
class MetaLSTM(MetaLearner):
    """Optimization as a Model for Few-Shot Learning (Ravi & Larochelle, ICLR 2017): Meta-LSTM.

    A coordinate-wise LSTM learns the update rule that trains a learner network on each task's support set:

        theta_t = c_t = f_t * c_{t-1} + i_t * (-grad_t),    grad_t = d L_support(theta_{t-1}) / d theta,

    with input gate i_t (a learned per-coordinate learning rate) and forget gate f_t (a learned decay)
    computed from the preprocessed gradient and loss, the parameter value and the previous gate (Eq. 2; see
    :class:`MetaLSTMCell`). The learner's initial parameters theta_0 = c_0 are the learned initial cell state:
    they are this module's ``backbone`` and ``head`` parameters. ``adapt`` runs ``inner_steps`` updates on the
    whole support set; the predictor is the learner with theta_T. Meta-training back-propagates the query loss
    through the T updates into the LSTM's weights and c_0.

    Gradient inputs are treated as constants (Section 3.2: "we assume that the gradients ... do not depend on
    the meta-learner's parameters"): grad_t and L_t enter the LSTM detached, which avoids second derivatives;
    the path theta_{t-1} -> theta_t through the cell state and the gates is kept. ``second_order=True`` keeps
    the full graph instead (an ablation, and what the float64 gradient check in the tests verifies).

    The learner is ``backbone`` followed by a linear ``head`` of ``ways`` outputs (``head=False`` for a
    backbone that already ends in an N-way layer, e.g. ``maml_omniglot``). It runs as a pure function of a
    flat parameter vector through :func:`metashot.nn.functional.functional_forward`; its batch-norm layers use
    the current batch's statistics in meta-training and meta-testing, as in the paper (so predictions on a
    query batch are normalised with that batch's statistics, like MAML's transductive setting). With the
    head, tasks with fewer than ``ways`` classes use its first rows.

    Args:
        backbone: feature network [B, *input_shape] -> [B, D] (any shape; flattened), e.g. conv4.
        ways: outputs of the learner's head (N).
        input_shape: shape of one input item, used to size the head (e.g. [1, 28, 28], [3, 84, 84]).
        item_shape: the old name of ``input_shape`` (checkpoints and configs written before the rename).
        inner_steps: T, updates on the support set (the authors: 12 for 1-shot, 8 for 5-shot).
        hidden_size: units of the first LSTM layer (the authors: 20).
        preprocess_p: p of the gradient/loss preprocessing (10).
        second_order: differentiate through the gradients (not in the paper).
        head: add the linear N-way head; False if the backbone's output [B, ways] already is the logits.
        forget_bias_init, input_bias_init: [low, high] of the uniform initialisation of the update cell's
            gate biases (the paper: [4, 6] and [-5, -4]; sigmoid(-4.5) = 0.011 is the initial learning rate).
    """

    adapt_needs_grad = True

    def __init__(self, backbone: nn.Module, ways: int = 5,
                 input_shape: tuple[int, ...] | list[int] | None = None, inner_steps: int = 12,
                 hidden_size: int = 20, preprocess_p: float = 10.0, second_order: bool = False,
                 head: bool = True, item_shape: tuple[int, ...] | list[int] | None = None,
                 forget_bias_init: tuple[float, float] | list[float] = (4.0, 6.0),
                 input_bias_init: tuple[float, float] | list[float] = (-5.0, -4.0)) -> None:
        super().__init__()
        if item_shape is not None and input_shape is not None and list(item_shape) != list(input_shape):
            raise ValueError(f"MetaLSTM: item_shape {list(item_shape)} (the old name of input_shape) and "
                             f"input_shape {list(input_shape)} disagree; give input_shape only")
        input_shape = input_shape or item_shape or (1, 28, 28)
        for name, v in (("ways", ways), ("inner_steps", inner_steps), ("hidden_size", hidden_size)):
            if int(v) != v or v < 1:
                raise ValueError(f"MetaLSTM: {name} must be an integer >= 1, got {v}")
        batch_stats_only(backbone)
        self.backbone = backbone
        self.ways = int(ways)
        self.input_shape = tuple(int(s) for s in input_shape)
        try:
            feat = output_dim(backbone, self.input_shape)
        except RuntimeError as e:
            raise ValueError(f"MetaLSTM: the backbone does not accept items of shape "
                             f"{list(self.input_shape)} ({e}); set algorithm_args.input_shape to the data's "
                             "[C, H, W]") from e
        if head:
            self.head: nn.Linear | None = nn.Linear(feat, self.ways)
        elif feat != self.ways:
            raise ValueError(f"MetaLSTM: head=False but the backbone outputs {feat} values per item, not "
                             f"ways={self.ways} logits; use head=True or a backbone with a {self.ways}-way "
                             "output layer")
        else:
            self.head = None
        self.inner_steps = int(inner_steps)
        self.second_order = bool(second_order)
        self.meta_lstm = MetaLSTMOptimizer(int(hidden_size), float(preprocess_p), tuple(forget_bias_init),
                                           tuple(input_bias_init))

    # -- the learner as a pure function of a flat parameter vector ------------------------------------------

    def learner_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The learner's parameters theta_0 = c_0 in flattening order: backbone's, then the head's."""
        head = [] if self.head is None else [(f"head.{n}", p) for n, p in self.head.named_parameters()]
        return [(f"backbone.{n}", p) for n, p in self.backbone.named_parameters()] + head

    def initial_theta(self) -> torch.Tensor:
        """theta_0 flattened: [P] (differentiable w.r.t. the stored parameters)."""
        return torch.cat([p.reshape(-1) for _, p in self.learner_parameters()])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat [P] -> {name: tensor of the parameter's shape} (views of ``theta``)."""
        named = self.learner_parameters()
        if theta.numel() != sum(p.numel() for _, p in named):
            raise ValueError(f"MetaLSTM.unflatten: got {theta.numel()} values but the learner has "
                             f"{sum(p.numel() for _, p in named)} parameters")
        chunks = theta.split([p.numel() for _, p in named])
        return {n: c.view(p.shape) for (n, p), c in zip(named, chunks, strict=True)}

    def learner_forward(self, theta: torch.Tensor, x: torch.Tensor, ways: int) -> torch.Tensor:
        """Logits of the learner with parameters ``theta`` [P]: x [B, *item] -> [B, ways]."""
        params = self.unflatten(theta)
        bb = {n[len("backbone."):]: v for n, v in params.items() if n.startswith("backbone.")}
        z = functional_forward(self.backbone, bb, {}, x, bn="batch").flatten(1)
        if self.head is None:
            return z[:, :ways]
        return F.linear(z, params["head.weight"][:ways], params["head.bias"][:ways])

    # -- the inner loop: the LSTM trains the learner on the support set ---------------------------------

    def _ways_of(self, support_y: torch.Tensor) -> int:
        ways = int(support_y.max()) + 1
        if ways > self.ways:
            raise ValueError(f"MetaLSTM: the support set has {ways} classes but the learner's head has "
                             f"{self.ways} outputs; build it with algorithm_args.ways >= {ways}")
        return ways

    def inner_loop(self, support_x: torch.Tensor, support_y: torch.Tensor,
                   trace: list[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """theta_T [P] after ``inner_steps`` LSTM updates on the support set (support_x [S, *item], [S]).

        The meta-learner's graph is recorded only in training mode with autograd enabled. If ``trace`` is a
        list, each step appends ``{"forget": f_t [P], "input": i_t [P], "loss": L_t, "grad": grad_t [P]}``
        (detached).
        """
        ways = self._ways_of(support_y)
        record = self.training and torch.is_grad_enabled()
        theta = self.initial_theta()
        if not record:
            theta = theta.detach()
        state = self.meta_lstm.initial_state(theta.shape[0], theta)
        for _ in range(self.inner_steps):
            if self.second_order and record:
                loss = F.cross_entropy(self.learner_forward(theta, support_x, ways), support_y)
                (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
            else:
                # the paper's simplification: grad_t and L_t are inputs, constants for the meta-gradient
                leaf = theta.detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(self.learner_forward(leaf, support_x, ways), support_y)
                    (grad,) = torch.autograd.grad(loss, leaf)
                loss = loss.detach()
            with torch.set_grad_enabled(record):
                theta, state = self.meta_lstm(theta, grad, loss, state)
            if trace is not None:
                trace.append({"forget": state[2].detach(), "input": state[3].detach(), "loss": loss.detach(),
                              "grad": grad.detach()})
        return theta

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """Train the learner on the support set with the LSTM; predictor: [M, *item] -> logits [M, N]."""
        ways = self._ways_of(support_y)
        theta = self.inner_loop(support_x, support_y)

        def predictor(query_x: torch.Tensor) -> torch.Tensor:
            return self.learner_forward(theta, query_x, ways)

        return predictor

    def config_dict(self) -> dict[str, Any]:
        return {"ways": self.ways, "input_shape": list(self.input_shape), "inner_steps": self.inner_steps,
                "hidden_size": self.meta_lstm.hidden_size, "preprocess_p": self.meta_lstm.preprocess_p,
                "second_order": self.second_order, "head": self.head is not None,
                "forget_bias_init": self.meta_lstm.forget_bias_init,
                "input_bias_init": self.meta_lstm.input_bias_init}
