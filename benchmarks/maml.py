"""MAML meta-training throughput and peak memory; prints one JSON object.

Config A: Omniglot-shaped inputs (1x28x28), the paper's Omniglot net (4 x [3x3 conv 64 stride 2, BN, ReLU],
mean-pool, linear head), 5-way 1-shot with 1 query per class, meta-batch 32, 1 inner step (alpha 0.4), second
order; each iteration is meta_loss + backward + one Adam step. Config B: A with 15 queries per class and 5
inner steps.

    python benchmarks/maml.py --config A --path vectorized --device cpu --threads 2
    python benchmarks/maml.py --config B --path loop --first-order
    python benchmarks/maml.py --config A --path loop --steps 10 --checkpoint-inner   # memory option
    python benchmarks/maml.py --config A --threads 1 --task-workers 2                # 2 task chunks, 2 cores
    python benchmarks/maml.py --config A --threads 1 --precision bf16 --profile      # autocast; conv share

``peak_mem_gib``: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set
(``ru_maxrss``, everything included: Python, torch, data), with ``rss_before_gib`` its value before the
timed iterations (after 2 warm-up iterations, so it usually equals the peak already).
``tasks_per_cpu_s`` divides by the process's CPU time (all threads) instead of wall time: on a shared machine
(``load_avg_1min`` above the core count) it is the steadier figure. ``train_mem_gib``: on CPU the peak RSS
minus the RSS before the first iteration (model, optimizer state and inputs already allocated), i.e. what the
meta-training step itself needs; on CUDA equal to ``peak_mem_gib``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import time

import torch

CONFIGS = {
    "A": {"ways": 5, "shots": 1, "queries": 1, "meta_batch": 32, "steps": 1, "inner_lr": 0.4},
    "B": {"ways": 5, "shots": 1, "queries": 15, "meta_batch": 32, "steps": 5, "inner_lr": 0.4},
}


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _load() -> float:
    try:
        import os

        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _conv_share(fn: object) -> float:
    """Share of the operators' self CPU time spent in convolution kernels during one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()  # type: ignore[operator]
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
    return round(conv / total, 3) if total else float("nan")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="A")
    p.add_argument("--path", choices=["loop", "vectorized"], default="vectorized")
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--steps", type=int, default=None, help="override the config's inner steps")
    p.add_argument("--queries", type=int, default=None, help="override the config's queries per class")
    p.add_argument("--meta-batch", type=int, default=None, help="override the config's meta-batch (32)")
    p.add_argument("--checkpoint-inner", action="store_true", help="recompute inner steps (loop path)")
    p.add_argument("--task-workers", type=int, default=1,
                   help="MAML(task_workers=...): chunks of the meta-batch run concurrently in threads")
    p.add_argument("--plain-bn", action="store_true",
                   help="MAML.analytic_bn = False: batch norm through autograd of the plain formula on the "
                        "vectorised first-order path too (the reference; default: analytic backward)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations (after 2 warm-up iterations)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: torch.autocast around the meta-loss (as train.precision; the task workers "
                        "enter it too)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one extra iteration (torch.profiler) and report the share of operator "
                        "self time spent in convolution kernels (forward, backward, double backward)")
    p.add_argument("--all", action="store_true",
                   help="A and B x loop/vectorized x second/first order in one process (a JSON line each)")
    a = p.parse_args(argv)
    if a.all:
        out = {}
        for cfg in ("A", "B"):
            for path in ("vectorized", "loop"):
                for fo in (False, True):
                    a.config, a.path, a.first_order = cfg, path, fo
                    out[f"{cfg}-{path}-{'fo' if fo else 'so'}"] = run(a)
        return out
    return run(a)


def run(a: argparse.Namespace) -> dict:
    from metashot.algorithms.maml import MAML
    from metashot.data.episodes import EpisodeBatch
    from metashot.nn.backbones import maml_omniglot

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = dict(CONFIGS[a.config])
    if a.steps is not None:
        cfg["steps"] = a.steps
    if a.queries is not None:
        cfg["queries"] = a.queries
    if a.meta_batch is not None:
        cfg["meta_batch"] = a.meta_batch
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    T, N, K, Q = cfg["meta_batch"], cfg["ways"], cfg["shots"], cfg["queries"]
    learner = MAML(maml_omniglot(1, 64, N), inner_lr=cfg["inner_lr"], inner_steps=cfg["steps"],
                   first_order=a.first_order, vectorized=a.path == "vectorized",
                   checkpoint_inner=a.checkpoint_inner, task_workers=a.task_workers).to(dev)
    learner.analytic_bn = not a.plain_bn
    learner.train()
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(a.seed)

    def make_batch() -> EpisodeBatch:
        sx = torch.rand(T, N * K, 1, 28, 28, generator=g)
        qx = torch.rand(T, N * Q, 1, 28, 28, generator=g)
        sy = torch.arange(N).repeat_interleave(K).expand(T, -1)
        qy = torch.arange(N).repeat_interleave(Q).expand(T, -1)
        return EpisodeBatch(sx, sy, qx, qy, torch.zeros(T, N, dtype=torch.long), N, K, Q).to(dev)

    batches = [make_batch() for _ in range(4)]

    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.precision == "bf16" \
        else contextlib.nullcontext

    def step(i: int) -> float:
        with autocast():
            loss, _ = learner.meta_loss(batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rss_start = _rss_gib()
    for i in range(2):
        step(i)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss0 = _rss_gib()
    t0, c0 = time.perf_counter(), time.process_time()
    loss = 0.0
    for i in range(a.iters):
        loss = step(i)
    sync()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**30
        torch.cuda.empty_cache()
    else:
        peak = _rss_gib()
    out = {
        "benchmark": "maml", "config": a.config, "path": a.path, "first_order": a.first_order,
        "device": str(dev), "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                                            else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "meta_batch": T, "ways": N, "shots": K, "queries": Q,
        "inner_steps": cfg["steps"], "checkpoint_inner": a.checkpoint_inner, "task_workers": a.task_workers,
        "iters": a.iters,
        "tasks_per_s": round(T * a.iters / dt, 2), "s_per_iter": round(dt / a.iters, 4),
        "tasks_per_cpu_s": round(T * a.iters / cpu, 2), "load_avg_1min": round(_load(), 2),
        "peak_mem_gib": round(peak, 4),
        "peak_mem_kind": ("cuda max_memory_allocated" if dev.type == "cuda"
                          else "process peak RSS (ru_maxrss)"),
        "rss_start_gib": round(rss_start, 4), "rss_before_gib": round(rss0, 4),
        "train_mem_gib": round(peak - (0.0 if dev.type == "cuda" else rss_start), 4),
        "final_loss": round(loss, 4), "torch": torch.__version__, "precision": a.precision,
        "analytic_bn": learner.analytic_bn,
    }
    if a.profile:
        out["conv_self_time_share"] = _conv_share(lambda: step(a.iters))
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
