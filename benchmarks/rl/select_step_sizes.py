"""Choose test-time adaptation step sizes on *validation* tasks (a seed other than the test seed).

For each policy, every (first step, later steps) pair of the grid is evaluated on ``--tasks`` goals drawn with
``--seed`` (default 999; the test tasks use 1234), and the pair with the best mean return over steps 1..3 is
printed as one JSON object per policy. The chosen pair is then passed to ``metashot rl eval --inner-lr``.

    python benchmarks/rl/select_step_sizes.py runs/maml-trpo-navigation2d runs/pretrained-trpo-navigation2d \
        --random
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from metashot.rl.evaluation import evaluate_adaptation
from metashot.rl.train import load_policy, make_policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--random", action="store_true", help="also a random initialisation")
    p.add_argument("--first", type=float, nargs="+", default=[0.5, 0.1, 0.03])
    p.add_argument("--later", type=float, nargs="+", default=[0.25, 0.1, 0.03])
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--trajectories", type=int, default=40)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=999)
    a = p.parse_args()
    torch.set_num_threads(1)
    policies = [(c, *load_policy(c)[:2]) for c in a.checkpoints]
    if a.random:
        cfg = policies[0][2]
        policies.append(("random-init", make_policy(cfg, cfg.make_env(), 0), cfg))
    for label, policy, cfg in policies:
        env = cfg.make_env()
        scores = {}
        for first, later in itertools.product(a.first, a.later):
            res = evaluate_adaptation(policy, env, a.tasks, a.trajectories, a.steps, [first, later], a.seed,
                                      cfg.algo.discount)
            scores[(first, later)] = (sum(res["returns"][1:]) / a.steps, res["returns"])
        best = max(scores, key=lambda k: scores[k][0])
        print(json.dumps({"policy": label, "seed": a.seed, "best_inner_lr": list(best),
                          "best_mean_return_steps_1_to_3": round(scores[best][0], 3),
                          "grid": {f"{f},{later}": [round(x, 2) for x in r] for (f, later), (_, r) in
                                   scores.items()}}))


if __name__ == "__main__":
    main()
