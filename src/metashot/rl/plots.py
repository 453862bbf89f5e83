"""Figures for meta-RL: return vs adaptation steps (the paper's Figures 4 and 5), 2D-navigation trajectories
before and after adaptation, and a run's learning curve. matplotlib is optional (``metashot[plot]``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from metashot.pyplot import pyplot

# Finn et al. 2017, 2D navigation, average return after 0-3 gradient steps (the official maml_rl evaluation,
# as quoted in issue 8); the oracle sees the goal and is not adapted.
PAPER_RETURNS: dict[str, dict[str, list[float]]] = {
    "navigation2d": {
        "MAML": [-40.41, -11.68, -3.33, -3.23],
        "pretrained": [-40.81, -19.73, -11.72, -8.47],
        "random init": [-82.66, -57.96, -53.84, -46.81],
        "oracle": [-2.29],
    },
}


def _save(plt: Any, fig: Any, output: str | Path) -> Path:
    fig.tight_layout()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def is_rl_run(run_dir: str | Path) -> bool:
    """True for a ``metashot rl train`` run folder (its metrics records carry ``return_0``)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return False
    with path.open() as f:
        first = f.readline()
    try:
        return "return_0" in json.loads(first)
    except json.JSONDecodeError:
        return False


def plot_adaptation(report: dict[str, Any], output: str | Path,
                    reference: dict[str, list[float]] | None = None) -> Path:
    """Average return (95% CI over tasks) after k adaptation steps, one line per evaluated policy.

    ``report``: {label: evaluate_adaptation result}. A policy evaluated at 0 steps only (the oracle) is drawn
    as a horizontal line. ``reference``: optional {label: returns} drawn dashed (e.g. the paper's rows).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, res in report.items():
        if not isinstance(res, dict) or "returns" not in res:
            continue
        r, c = res["returns"], res["ci95"]
        if len(r) == 1:
            ax.axhline(r[0], ls=":", color="k", label=f"{label} (0 steps)")
            continue
        ks = list(range(len(r)))
        ax.errorbar(ks, r, yerr=c, marker="o", capsize=3, label=label)
    for label, r in (reference or {}).items():
        if len(r) == 1:
            ax.axhline(r[0], ls="-.", color="grey", alpha=0.6, label=f"{label} (paper)")
            continue
        ax.plot(range(len(r)), r, ls="--", marker="x", alpha=0.6, label=f"{label} (paper)")
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    env = next((v["env"] for v in report.values() if isinstance(v, dict) and "env" in v), "")
    ax.set_title(f"{env}: return after adaptation")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, output)


def plot_navigation(policy: Any, cfg: Any, output: str | Path, goals: int = 4, seed: int = 1234,
                    inner_lr: float | None = None, trajectories: int = 20) -> Path:
    """2D-navigation trajectories of ``goals`` test goals: the mean-action path before adaptation and after
    one VPG step on ``trajectories`` sampled trajectories (like the paper's Figure 4, left)."""
    from metashot.rl.adaptation import adapt
    from metashot.rl.policy import policy_params
    from metashot.rl.rollout import process, rollout

    if cfg.env.name != "navigation2d":
        raise ValueError(f"trajectory plots are for navigation2d, not {cfg.env.name}")
    plt = pyplot()
    env = cfg.make_env()
    gen = torch.Generator().manual_seed(seed)
    tasks = env.sample_tasks(goals, gen)
    params = policy_params(policy)
    lr = inner_lr if inner_lr is not None else cfg.eval.inner_lr[0]
    pre_mean = rollout(env, policy, params, tasks, 1, gen, per_task=False, deterministic=True)
    batch = process(rollout(env, policy, params, tasks, trajectories, gen, per_task=False), cfg.algo.discount)
    adapted = {k: v.detach() for k, v in adapt(policy, params, [batch], lr, first_order=True).items()}
    post_mean = rollout(env, policy, adapted, tasks, 1, gen, per_task=True, deterministic=True)
    fig, axes = plt.subplots(1, goals, figsize=(3.2 * goals, 3.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for traj, style, label in ((pre_mean, "--", "pre-update"), (post_mean, "-", "1 gradient step")):
            m = traj.mask[i, 0].bool()
            moves = (traj.actions[i, 0][m].to(torch.float64) * env.action_scale).clamp(-0.1, 0.1)
            path = torch.cat([torch.zeros(1, 2, dtype=torch.float64), moves.cumsum(0)])
            ax.plot(path[:, 0], path[:, 1], style, marker=".", ms=3, label=label)
        ax.plot(*tasks[i].tolist(), marker="*", ms=14, color="r", label="goal")
        ax.plot(0, 0, marker="o", color="k")
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.set_aspect("equal")
        ax.set_title(f"goal ({tasks[i, 0]:.2f}, {tasks[i, 1]:.2f})", fontsize=9)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{cfg.name}: mean-action trajectories before and after one step (step size {lr})",
                 fontsize=10)
    return _save(plt, fig, output)


def plot_rl_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Learning curve of a ``metashot rl train`` run: pre- and post-update return per iteration."""
    plt = pyplot()
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl; is this a metashot rl train run folder?")
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if not recs:
        raise ValueError(f"{path}: no records")
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({k for r in recs for k in r if k.startswith("return_")})
    for k in keys:
        xs = [r["iteration"] for r in recs if k in r]
        ax.plot(xs, [r[k] for r in recs if k in r], label=f"after {k.split('_')[1]} step(s)")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("average return (training tasks)")
    ax.set_title(Path(run_dir).name)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(plt, fig, output or Path(run_dir) / "learning_curves.png")
