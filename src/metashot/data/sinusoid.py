"""Sinusoid regression tasks (Finn, Abbeel & Levine 2017, section 5.1).

A task is y = A sin(x - phi) with amplitude A ~ U[0.1, 5.0], phase phi ~ U[0, pi] and inputs x ~ U[-5, 5];
K points form the support set, others the query set. Batch ``i`` of a :class:`SinusoidTasks` sampler depends
only on ``(seed, i)`` (``numpy.random.default_rng([seed, i])``), like the image episode sampler, so the
Trainer can draw ``source.sample(step)`` from it. The fine-tuning evaluation is
:mod:`metashot.sinusoid_eval` (a dataset knows no algorithm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
