"""Sinusoid regression evaluation (Finn, Abbeel & Levine 2017, section 5.1): fine-tuning MSE and Figure 2.

Fine-tune on K = 5 support points with 1, 5 and 10 gradient steps and report the mean squared error on query
points of the same task (the paper's Table 2 protocol, appendix C.1). The tasks come from
:class:`metashot.data.sinusoid.SinusoidTasks`; the learner must offer the MAML family's ``query_outputs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metashot.data.sinusoid import SinusoidTasks


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


def evaluate_checkpoints(checkpoints: dict[str, str | Path | None], shots: int = 5,
                         steps: Sequence[int] = (1, 5, 10), tasks: int = 600, queries: int = 100,
                         seed: int = 4321, inner_lr: float | None = None, plot: str | Path | None = None,
                         device: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`finetune_mse` of each checkpoint (label -> path; None is skipped), on the same tasks.

    ``inner_lr`` replaces every learner's fine-tuning step size (an evaluation setting, see
    :func:`metashot.evaluate.apply_eval_settings`); ``plot`` writes :func:`plot_fits` of them all there.
    Returns ``{label: {"checkpoint": path, **finetune_mse(...)}}`` and ``"plot"`` when drawn.
    """
    from metashot.checkpoint import load_checkpoint
    from metashot.evaluate import apply_eval_settings

    learners = {}
    report: dict[str, Any] = {}
    for label, path in checkpoints.items():
        if path is None:
            continue
        learner, _ = load_checkpoint(path, device)
        if inner_lr is not None:
            apply_eval_settings(learner, inner_lr=inner_lr)
        learners[label] = learner
        res = finetune_mse(learner, shots, steps, tasks, queries, seed, device=device)
        report[label] = {"checkpoint": str(path), **res}
    if plot:
        report["plot"] = str(plot_fits(learners, plot, shots))
    return report
