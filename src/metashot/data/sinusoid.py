"""Sinusoid regression tasks (Finn, Abbeel & Levine 2017, section 5.1) and their fine-tuning evaluation.

A task is y = A sin(x - phi) with amplitude A ~ U[0.1, 5.0], phase phi ~ U[0, pi] and inputs x ~ U[-5, 5];
K points form the support set, others the query set. Batch ``i`` of a :class:`SinusoidTasks` sampler depends
only on ``(seed, i)`` (``numpy.random.default_rng([seed, i])``), like the image episode sampler, so the
Trainer can draw ``source.sample(step)`` from it.

Evaluation (:func:`finetune_mse`): fine-tune on K = 5 support points with 1, 5 and 10 gradient steps and
report the mean squared error on query points of the same task (the paper's Table 2 protocol, appendix C.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class RegressionBatch:
    """T regression tasks. Shapes: support_x/support_y [T, K, 1], query_x/query_y [T, Q, 1]; ``amplitude`` and
    ``phase`` [T] describe each task (for plots). ``ways`` is 1 (one output)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    amplitude: torch.Tensor
    phase: torch.Tensor
    shots: int
    queries: int
    ways: int = 1

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str = "cpu", non_blocking: bool = False) -> RegressionBatch:
        def mv(x: torch.Tensor) -> torch.Tensor:
            return x.to(device, non_blocking=non_blocking)

        return RegressionBatch(mv(self.support_x), mv(self.support_y), mv(self.query_x), mv(self.query_y),
                               self.amplitude, self.phase, self.shots, self.queries, self.ways)

    def task(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.support_x[t], self.support_y[t], self.query_x[t], self.query_y[t]


class SinusoidTasks:
    """Sampler of sinusoid regression tasks.

    Args:
        shots: support points per task (K; the paper meta-trains with K = 10).
        queries: query points per task (the paper uses another K).
        tasks_per_batch: T, the meta-batch (25 in the paper).
        seed: batch ``i`` depends only on (seed, i).
        amplitude, phase, x_range: the task distribution's ranges.
        dtype: float dtype of the tensors.
    """

    def __init__(self, shots: int = 10, queries: int = 10, tasks_per_batch: int = 25, seed: int = 0,
                 amplitude: Sequence[float] = (0.1, 5.0), phase: Sequence[float] = (0.0, math.pi),
                 x_range: Sequence[float] = (-5.0, 5.0), dtype: torch.dtype = torch.float32) -> None:
        for name, v in (("shots", shots), ("queries", queries), ("tasks_per_batch", tasks_per_batch)):
            if int(v) != v or v < 1:
                raise ValueError(f"SinusoidTasks: {name} must be an integer >= 1, got {v}")
        for name, r in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if len(r) != 2 or not r[0] <= r[1]:
                raise ValueError(f"SinusoidTasks: {name} must be [low, high] with low <= high, got {list(r)}")
        self.shots, self.queries, self.tasks_per_batch = int(shots), int(queries), int(tasks_per_batch)
        self.seed = int(seed)
        self.amplitude = (float(amplitude[0]), float(amplitude[1]))
        self.phase = (float(phase[0]), float(phase[1]))
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.dtype = dtype

    def sample(self, batch_index: int) -> RegressionBatch:
        """Batch ``batch_index``: T tasks with K support and Q query points each."""
        rng = np.random.default_rng([self.seed, int(batch_index)])
        T, K, Q = self.tasks_per_batch, self.shots, self.queries
        amp = rng.uniform(*self.amplitude, size=T)
        ph = rng.uniform(*self.phase, size=T)
        x = rng.uniform(*self.x_range, size=(T, K + Q, 1))
        y = amp[:, None, None] * np.sin(x - ph[:, None, None])
        xt = torch.from_numpy(x).to(self.dtype)
        yt = torch.from_numpy(y).to(self.dtype)
        return RegressionBatch(xt[:, :K], yt[:, :K], xt[:, K:], yt[:, K:], torch.from_numpy(amp),
                               torch.from_numpy(ph), K, Q)


def sinusoid_source(options: dict[str, Any], shots: int, queries: int, meta_batch: int,
                    seed: int) -> SinusoidTasks:
    """The training sampler of a config (``data.options`` may set amplitude, phase, x_range)."""
    allowed = {"amplitude", "phase", "x_range"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"sinusoid: unknown data.options {unknown}; valid: {sorted(allowed)}")
    return SinusoidTasks(shots, queries, meta_batch, seed, **options)


def finetune_mse(learner: Any, shots: int = 5, steps: Sequence[int] = (1, 5, 10), tasks: int = 600,
                 queries: int = 100, seed: int = 4321, meta_batch: int = 100,
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """Mean squared error on query points after fine-tuning on ``shots`` points with each number of ``steps``.

    ``learner`` must offer ``query_outputs(support_x, support_y, query_x, steps=k)`` (the MAML family), which
    takes k gradient steps from its meta-learned parameters with its inner learning rate (first order; no
    second derivatives are needed to evaluate). Tasks are fixed by ``seed``; every step count sees the same
    tasks. Returns ``{"mse": {k: mean}, "ci95": {k: 1.96 std / sqrt(tasks)}, ...}``.
    """
    was = learner.training
    learner.eval()
    sampler = SinusoidTasks(shots, queries, meta_batch, seed)
    per: dict[int, list[np.ndarray]] = {int(k): [] for k in steps}
    try:
        done, i = 0, 0
        while done < tasks:
            b = sampler.sample(i).to(device)
            n = min(meta_batch, tasks - done)
            for k in per:
                out = learner.query_outputs(b.support_x[:n], b.support_y[:n], b.query_x[:n], steps=int(k),
                                            first_order=True).detach()
                per[k].append(((out - b.query_y[:n]) ** 2).mean(dim=(1, 2)).cpu().double().numpy())
            done += n
            i += 1
    finally:
        learner.train(was)
    mse = {k: float(np.concatenate(v).mean()) for k, v in per.items()}
    ci = {k: float(1.96 * np.concatenate(v).std() / math.sqrt(tasks)) for k, v in per.items()}
    return {"mse": mse, "ci95": ci, "tasks": tasks, "shots": shots, "queries": queries, "seed": seed}


def plot_fits(learners: dict[str, Any], path: str | Path, shots: int = 5, steps: Sequence[int] = (1, 10),
              seed: int = 7, task_index: int = 0) -> Path:
    """A figure like the paper's Figure 2: per learner, the true curve, the K support points, and the
    predictions before and after ``steps`` gradient steps. Needs matplotlib (``metashot[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot_fits needs matplotlib: pip install 'metashot[plot]'") from e
    b = SinusoidTasks(shots, 1, task_index + 1, seed).sample(0)
    t = task_index
    grid = torch.linspace(-5, 5, 200).view(1, 200, 1)
    amp, ph = float(b.amplitude[t]), float(b.phase[t])
    fig, axes = plt.subplots(1, len(learners), figsize=(5.5 * len(learners), 4), squeeze=False)
    for ax, (name, learner) in zip(axes[0], learners.items(), strict=True):
        learner.eval()
        ax.plot(grid[0, :, 0], amp * torch.sin(grid[0, :, 0] - ph), "r-", lw=2, label="ground truth")
        ax.plot(b.support_x[t, :, 0], b.support_y[t, :, 0], "^", color="purple", ms=9,
                label=f"{shots} points used for gradient")
        for k, style in zip([0, *steps], [":", "--", "-", "-."], strict=False):
            out = learner.query_outputs(b.support_x[t : t + 1], b.support_y[t : t + 1], grid, steps=k,
                                        first_order=True).detach()
            ax.plot(grid[0, :, 0], out[0, :, 0], style, color="green" if k else "lightgreen",
                    label="pre-update" if k == 0 else f"{k} grad step{'s' if k > 1 else ''}")
        ax.set_title(name)
        ax.set_ylim(-5.5, 5.5)
        ax.legend(fontsize=8, loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
