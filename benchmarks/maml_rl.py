"""Seconds per MAML-TRPO iteration on 2D navigation with the paper's sizes; prints one JSON object.

20 tasks x 20 trajectories x 100 steps, one inner VPG step, TRPO meta-step with 10 conjugate-gradient
iterations. The first (warm-up) iteration is not timed.

    python benchmarks/maml_rl.py                                  # vectorised, double-backward FVP, 1 thread
    python benchmarks/maml_rl.py --fvp gauss-newton
    python benchmarks/maml_rl.py --fvp chain --fvp-workers 2            # J^T F J, 2 threads over tasks
    python benchmarks/maml_rl.py --path loop --threads 2
    python benchmarks/maml_rl.py --checkpoint runs/maml-trpo-navigation2d   # from a trained policy
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from metashot.rl.policy import policy_params
from metashot.rl.train import RLConfig, iteration_generator, load_policy, make_policy, meta_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", choices=["vectorized", "loop"], default="vectorized")
    p.add_argument("--fvp", choices=["double-backward", "gauss-newton", "chain"], default="double-backward")
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--fvp-workers", type=int, default=1, help="threads over task chunks (--fvp chain)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--meta-batch", type=int, default=20)
    p.add_argument("--trajectories", type=int, default=20)
    p.add_argument("--checkpoint", help="start from this policy (default: a fresh one)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = RLConfig.from_dict({
        "env": {"name": "navigation2d", "horizon": 100},
        "algo": {"inner_lr": 0.5, "meta_batch": a.meta_batch, "trajectories": a.trajectories,
                 "vectorized": a.path == "vectorized", "fvp": a.fvp, "first_order": a.first_order,
                 "fvp_workers": a.fvp_workers},
    })
    env = cfg.make_env()
    policy = load_policy(a.checkpoint)[0] if a.checkpoint else make_policy(cfg, env, 0)
    params = policy_params(policy)
    params, _ = meta_step(env, policy, params, cfg, iteration_generator(0, 0))  # warm-up
    times, sample, trpo, post = [], [], [], []
    for i in range(1, a.iterations + 1):
        t0 = time.perf_counter()
        params, stats = meta_step(env, policy, params, cfg, iteration_generator(0, i))
        times.append(time.perf_counter() - t0)
        sample.append(stats["sample_s"])
        trpo.append(stats["trpo_s"])
        post.append(stats["return_1"])
    n = len(times)
    print(json.dumps({
        "benchmark": "maml_rl_navigation2d", "path": a.path, "fvp": a.fvp, "fvp_workers": a.fvp_workers,
        "first_order": a.first_order, "threads": a.threads, "meta_batch": a.meta_batch,
        "trajectories": a.trajectories, "horizon": 100,
        "start": a.checkpoint or "fresh policy", "iterations_timed": n,
        "s_per_iter": round(sum(times) / n, 3), "sample_s": round(sum(sample) / n, 3),
        "trpo_s": round(sum(trpo) / n, 3), "post_update_return": round(sum(post) / n, 2),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
