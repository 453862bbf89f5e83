"""Where a MAML-TRPO iteration's time goes: one Fisher-vector product, timed and profiled (prints JSON).

Paper sizes (20 tasks x 20 trajectories x 100 steps, 2 x 100 policy), a fresh policy, one thread:
the double-backward product through the inner loop, the Gauss-Newton product (set-up and per product), plain
TRPO's product without an inner loop, one 40,000 x 100 x 100 matmul, and the share of matrix products in the
double-backward product's profile.

    python benchmarks/rl/fvp_profile.py
"""

from __future__ import annotations

import json
import time

import torch
from torch.profiler import profile

from metashot.rl.adaptation import meta_objective
from metashot.rl.curvature import gauss_newton_fvp
from metashot.rl.policy import flat, policy_params
from metashot.rl.train import RLConfig, iteration_generator, make_policy, sample_meta_batch


def timed(fn, repeat: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def kl_hvp(policy, params, mb, lr):
    leaves = list(params.values())
    _, kl = meta_objective(policy, params, mb, lr)
    kg = flat(torch.autograd.grad(kl, leaves, create_graph=True))
    v = torch.randn_like(kg)
    return lambda: torch.autograd.grad(kg @ v, leaves, retain_graph=True)


def main() -> None:
    torch.set_num_threads(1)
    out = {"threads": 1, "torch": torch.__version__}
    x, w = torch.randn(40_000, 100), torch.randn(100, 100)
    out["matmul_40000x100x100_s"] = round(timed(lambda: x @ w, 10), 4)
    for name, steps in (("maml", 1), ("plain_trpo", 0)):
        cfg = RLConfig.from_dict({"algo": {"inner_lr": 0.5, "inner_steps": steps}})
        env = cfg.make_env()
        policy = make_policy(cfg, env, 0)
        params = policy_params(policy)
        mb, _ = sample_meta_batch(env, policy, params, cfg, iteration_generator(0, 0))
        hvp = kl_hvp(policy, params, mb, 0.5)
        out[f"{name}_double_backward_fvp_s"] = round(timed(hvp), 3)
        if name == "maml":
            with profile() as prof:
                hvp()
            ev = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in ev)
            mm = [e for e in ev if e.key in ("aten::mm", "aten::bmm")]
            out["maml_fvp_matmul_calls"] = sum(e.count for e in mm)
            out["maml_fvp_matmul_share"] = round(sum(e.self_cpu_time_total for e in mm) / total, 3)
            t = time.perf_counter()
            gn = gauss_newton_fvp(policy, params, mb, 0.5)
            out["maml_gauss_newton_setup_s"] = round(time.perf_counter() - t, 3)
            v = torch.randn(sum(p.numel() for p in params.values()))
            out["maml_gauss_newton_fvp_s"] = round(timed(lambda gn=gn, v=v: gn(v)), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
