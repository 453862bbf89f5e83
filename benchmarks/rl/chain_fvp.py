"""Fisher-vector products of MAML-TRPO on 2D navigation, per method: set-up and per-product seconds (JSON).

Paper sizes (20 tasks x 20 trajectories x 100 steps, 2 x 100 ReLU policy, one inner step 0.5), a fresh
policy, one intra-op thread. Methods: the double backward of the KL through the inner loop (the reference),
:class:`metashot.rl.curvature.ChainCurvature` on autograd's graphs (``fast=False``) and with the written-out
MLP passes (``fast=True``), each with 1 and 2 task-chunk worker threads. Each product is also checked against
the reference on the same vector (``max_rel_err``, float32).

    python benchmarks/rl/chain_fvp.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from metashot.rl.adaptation import meta_objective
from metashot.rl.curvature import ChainCurvature
from metashot.rl.policy import flat, policy_params
from metashot.rl.train import RLConfig, iteration_generator, make_policy, sample_meta_batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = RLConfig.from_dict({"algo": {"inner_lr": 0.5, "inner_steps": 1}})
    env = cfg.make_env()
    policy = make_policy(cfg, env, 0)
    params = policy_params(policy)
    mb, _ = sample_meta_batch(env, policy, params, cfg, iteration_generator(0, 0))
    leaves = list(params.values())
    v = torch.randn(sum(x.numel() for x in leaves), generator=torch.Generator().manual_seed(0))
    out: dict[str, object] = {"benchmark": "maml_trpo_fvp", "threads": 1, "repeat": a.repeat,
                              "torch": torch.__version__}

    t = time.perf_counter()
    _, kl = meta_objective(policy, params, mb, 0.5, vectorized=False)
    kg = flat(torch.autograd.grad(kl, leaves, create_graph=True))
    setup = time.perf_counter() - t
    ref = flat(torch.autograd.grad(kg @ v, leaves, retain_graph=True))
    t = time.perf_counter()
    for _ in range(a.repeat):
        flat(torch.autograd.grad(kg @ v, leaves, retain_graph=True))
    prod = (time.perf_counter() - t) / a.repeat
    out["double_backward"] = {"setup_s": round(setup, 4), "product_s": round(prod, 4)}

    for fast in (False, True):
        for workers in (1, 2):
            t = time.perf_counter()
            curv = ChainCurvature(policy, params, mb, 0.5, workers=workers, fast=fast)
            setup = time.perf_counter() - t
            r = curv(v)
            t = time.perf_counter()
            for _ in range(a.repeat):
                curv(v)
            prod = (time.perf_counter() - t) / a.repeat
            curv.close()
            out[f"chain_{'written_out' if fast else 'autograd'}_workers{workers}"] = {
                "setup_s": round(setup, 4), "product_s": round(prod, 4),
                "max_rel_err": float((r - ref).norm() / ref.norm())}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
