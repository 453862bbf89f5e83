"""Meta-RL evaluation of policies: average return on new tasks after 0, 1, ..., k adaptation steps.

``metashot rl eval`` compares checkpoints (and, optionally, a randomly initialised policy) on the same test
tasks: each policy is evaluated by :func:`evaluate_adaptation` with its own config's
environment, discount and evaluation protocol unless overridden, and the report can be drawn as the paper's
return-vs-steps figure and as 2D-navigation trajectories.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from metashot.rl.adaptation import adapt
from metashot.rl.policy import GaussianMLPPolicy, policy_params
from metashot.rl.rollout import process, rollout
from metashot.rl.train import RLConfig, load_policy, make_policy


def evaluate_adaptation(policy: GaussianMLPPolicy, env: Any, tasks: int = 40, trajectories: int = 40,
                        steps: int = 3, inner_lr: float | list[float] = 0.1, seed: int = 1234,
                        discount: float = 0.99, vectorized: bool = True) -> dict[str, Any]:
    """Average return on ``tasks`` new tasks (fixed by ``seed``) after 0..``steps`` VPG adaptation steps, each
    on ``trajectories`` trajectories sampled by the current policy, as in the paper's Figures 4 and 5.

    Returns ``returns[k]`` (mean over tasks of the mean trajectory return after k steps) and ``ci95[k]``
    (1.96 x the standard error over tasks).
    """
    gen = torch.Generator().manual_seed(seed)
    task_set = env.sample_tasks(tasks, gen)
    params = policy_params(policy)
    cur, batches, per_task = params, [], False
    means, cis, per = [], [], []
    for k in range(steps + 1):
        traj = rollout(env, policy, cur, task_set, trajectories, gen, per_task=per_task)
        r = traj.returns().mean(1).to(torch.float64)
        means.append(float(r.mean()))
        cis.append(float(1.96 * r.std(unbiased=False) / math.sqrt(len(r))))
        per.append([round(float(x), 4) for x in r])
        if k < steps:
            batches.append(process(traj, discount))
            cur = {n: v.detach() for n, v in adapt(policy, params, batches, inner_lr, first_order=True,
                                                      vectorized=vectorized).items()}
            per_task = True
    return {"env": getattr(env, "name", "?"), "tasks": tasks, "trajectories": trajectories, "seed": seed,
            "inner_lr": inner_lr, "returns": means, "ci95": cis, "per_task_returns": per,
            "tasks_sampled": task_set.tolist()}


RANDOM_LABEL = "random-init"

Evaluated = tuple[str, GaussianMLPPolicy, RLConfig]  # (label, policy, its run config)


def load_policies(checkpoints: Sequence[str | Path], random: bool = False, random_seed: int = 0,
                  env: str = "navigation2d") -> list[Evaluated]:
    """The policies to compare: each checkpoint labelled by its folder name (or the bundled name as given),
    then with ``random`` a policy initialised with ``random_seed`` (label ``random-init``) on the first
    checkpoint's config, or on environment ``env`` without one. The random policy never sees the goal."""
    loaded: list[Evaluated] = [(Path(c).name if Path(c).exists() else str(c), *load_policy(c)[:2])
                               for c in checkpoints]
    if random:
        base = loaded[0][2] if loaded else RLConfig.from_dict({"env": {"name": env}})
        if base.env.options.get("observe_goal"):
            base = RLConfig.from_dict({**base.to_dict(), "env": {**base.to_dict()["env"], "options": {}}})
        loaded.append((RANDOM_LABEL, make_policy(base, base.make_env(), random_seed), base))
    return loaded


def parse_step_sizes(items: Sequence[str], labels: Sequence[str]) -> dict[str, list[float]]:
    """Per-policy step sizes from ``LABEL=LR[,LR...]`` strings (``--lr-of``); every label must be evaluated.

    Raises:
        ValueError: an item that is not ``LABEL=LR[,LR...]``, or a label of no evaluated policy.
    """
    per_label: dict[str, list[float]] = {}
    for item in items:
        label, _, lrs = item.partition("=")
        try:
            per_label[label] = [float(x) for x in lrs.split(",")]
        except ValueError as e:
            raise ValueError(f"--lr-of expects LABEL=LR[,LR...], got {item!r}") from e
    unknown = set(per_label) - set(labels)
    if unknown:
        raise ValueError(f"--lr-of names no evaluated policy: {sorted(unknown)}; labels are {list(labels)}")
    return per_label


def evaluate_policies(loaded: Sequence[Evaluated], step_sizes: dict[str, list[float]] | None = None,
                      inner_lr: list[float] | None = None, tasks: int | None = None,
                      trajectories: int | None = None, steps: int | None = None, seed: int | None = None,
                      on_result: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """``{label: evaluate_adaptation(...)}`` of each policy, in order; ``on_result(label, result)`` is called
    as each one finishes.

    A policy's step sizes are its ``step_sizes`` entry, else ``inner_lr``, else its config's
    ``eval.inner_lr``; every other argument left None takes the policy's config (``eval.tasks``,
    ``eval.trajectories``, ``eval.steps``, ``eval.seed``).
    """
    report: dict[str, Any] = {}
    for label, policy, cfg in loaded:
        ev = cfg.eval
        env = cfg.make_env()
        lrs = (step_sizes or {}).get(label) or inner_lr or ev.inner_lr
        res = evaluate_adaptation(policy, env, tasks or ev.tasks, trajectories or ev.trajectories,
                                  ev.steps if steps is None else steps, lrs,
                                  ev.seed if seed is None else seed, cfg.algo.discount)
        env.close()
        report[label] = res
        if on_result is not None:
            on_result(label, res)
    return report


def returns_line(label: str, res: dict[str, Any]) -> str:
    """One line of a policy's result: its mean return +- 95% CI after each number of adaptation steps."""
    pairs = zip(res["returns"], res["ci95"], strict=True)
    steps = ", ".join(f"{k}: {r:.2f} +- {c:.2f}" for k, (r, c) in enumerate(pairs))
    return (f"{label} ({res['env']}, {res['tasks']} tasks x {res['trajectories']} trajectories): "
            f"return after k steps {steps}")


def draw(report: dict[str, Any], loaded: Sequence[Evaluated], plot: str | Path | None = None,
         paper_reference: bool = False, plot_trajectories: str | Path | None = None) -> dict[str, str]:
    """Write the figures asked for (needs matplotlib); returns ``{"plot": path, "plot_trajectories": path}``
    for those drawn. ``plot``: return vs adaptation steps of every policy in ``report`` (with the paper's
    rows for the first policy's environment when ``paper_reference``); ``plot_trajectories``: 2D-navigation
    trajectories before/after adaptation of the first policy."""
    from metashot.rl.plots import PAPER_RETURNS, plot_adaptation, plot_navigation

    drawn = {}
    if plot:
        ref = PAPER_RETURNS.get(loaded[0][2].env.name) if paper_reference else None
        drawn["plot"] = str(plot_adaptation(report, plot, ref))
    if plot_trajectories:
        _, policy, cfg = loaded[0]
        drawn["plot_trajectories"] = str(plot_navigation(policy, cfg, plot_trajectories))
    return drawn
