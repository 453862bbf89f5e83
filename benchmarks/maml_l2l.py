"""learn2learn's MAML on benchmarks/maml.py's configs, on the same machine: the peer of the speed ratio.

learn2learn is NOT a metashot dependency. Its 0.2.x sdist does not build on Python 3.11 (pre-generated Cython
sources), but its MAML is pure Python, so this script imports ``learn2learn/algorithms/maml.py`` and
``learn2learn/utils`` from an unpacked source tree without running the package's ``__init__`` (which loads the
Cython data extensions and torchvision):

    pip download --no-deps learn2learn==0.2.0 -d /tmp/l2l
    tar xzf /tmp/l2l/learn2learn-0.2.0.tar.gz -C /tmp/l2l
    python benchmarks/maml_l2l.py --l2l-src /tmp/l2l/learn2learn-0.2.0 --config A [--first-order] --threads 2

Each iteration follows learn2learn's MAML examples: per task ``clone()``, ``adapt(support loss)`` for the
inner steps, query loss ``backward()``; then one Adam step. The network is metashot's copy of the paper's
Omniglot net (an ordinary ``nn.Module``; torch batch norm in training mode, i.e. per-batch statistics as in
metashot), on the same random inputs as benchmarks/maml.py. Prints one JSON object with ``tasks_per_s``.
(PyPI here offers learn2learn up to 0.2.0; the issue's reference figures were for 0.2.1.)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from maml import CONFIGS  # noqa: E402  (benchmarks/maml.py: the same configs)


def load_l2l_maml(src: Path) -> type:
    pkg = src / "learn2learn"
    if not (pkg / "algorithms" / "maml.py").is_file():
        raise SystemExit(f"--l2l-src {src}: no learn2learn/algorithms/maml.py there (an unpacked sdist)")
    for name, path in (("learn2learn", pkg), ("learn2learn.algorithms", pkg / "algorithms")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod
    return importlib.import_module("learn2learn.algorithms.maml").MAML


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--l2l-src", type=Path, required=True, help="an unpacked learn2learn sdist")
    p.add_argument("--config", choices=sorted(CONFIGS), default="A")
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--iters", type=int, default=10, help="timed iterations (after 2 warm-up iterations)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    l2l_maml = load_l2l_maml(a.l2l_src)
    from metashot.nn.backbones import maml_omniglot

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = CONFIGS[a.config]
    T, N, K, Q = cfg["meta_batch"], cfg["ways"], cfg["shots"], cfg["queries"]
    torch.manual_seed(a.seed)
    maml = l2l_maml(maml_omniglot(1, 64, N), lr=cfg["inner_lr"], first_order=a.first_order)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(a.seed)
    batches = []
    for _ in range(4):
        sx = torch.rand(T, N * K, 1, 28, 28, generator=g)
        qx = torch.rand(T, N * Q, 1, 28, 28, generator=g)
        sy = torch.arange(N).repeat_interleave(K)
        qy = torch.arange(N).repeat_interleave(Q)
        batches.append((sx, sy, qx, qy))

    def step(i: int) -> float:
        sx, sy, qx, qy = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for t in range(T):
            learner = maml.clone()
            for _ in range(cfg["steps"]):
                learner.adapt(loss_fn(learner(sx[t]), sy))
            loss = loss_fn(learner(qx[t]), qy) / T
            loss.backward()
            total += float(loss.detach())
        opt.step()
        return total

    for i in range(2):
        step(i)
    t0, c0 = time.perf_counter(), time.process_time()
    loss = 0.0
    for i in range(a.iters):
        loss = step(i)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"benchmark": "maml-learn2learn", "learn2learn_src": a.l2l_src.name, "config": a.config,
           "first_order": a.first_order, "threads": torch.get_num_threads(), "meta_batch": T, "queries": Q,
           "inner_steps": cfg["steps"], "iters": a.iters, "tasks_per_s": round(T * a.iters / dt, 2),
           "s_per_iter": round(dt / a.iters, 4), "tasks_per_cpu_s": round(T * a.iters / cpu, 2),
           "load_avg_1min": round(os.getloadavg()[0], 2), "final_loss": round(loss, 4),
           "torch": torch.__version__}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
