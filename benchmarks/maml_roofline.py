"""Compute ceiling of MAML configs A and B on this CPU, measured side by side with metashot and learn2learn.

The "bound" below is an empirical ceiling: the measured rate of ONE convolution kernel at ONE shape on this
machine, divided by the FLOPs of a task. It is not a proof that no implementation can go faster (another
kernel, layout or fused schedule might), only a strong sign that a target far above it is implausible.

A speed target in tasks/s is reachable only if the machine can execute the FLOPs of that many tasks per
second. For each config and order this script counts the FLOPs of one task and, in each of ``--rounds``
rounds, measures at the same moment (the speed of this shared machine drifts by 1.5x within minutes):

- ``peak_gflops``: the rate of the network's most efficient kernel, the 64->64 3x3 stride-2 convolution of
  its second layer (forward, input gradient and weight gradient, fp32, batch of 75 14x14 maps: a B query
  set), run as one single-threaded stream per core (as MAML's ``task_workers``) and as one stream on all
  cores; the better of the two, best of 3 timings. Every other part of a MAML step (the 1-channel first
  layer, the smaller maps of layers 3-4, batch norm, ReLU, the inner-loop updates) runs slower than this or
  adds work the count leaves out, so we do not expect the step to go faster.
- ``bound_tasks_per_s`` = peak_gflops / gflop_per_task: the empirical ceiling; an exact fp32 implementation
  built from kernels no faster than that one cannot exceed it at that moment.
- metashot's best CPU variant (``benchmarks/maml.py``: config A the vectorised path, B the loop path, 2 task
  workers x 1 thread) and learn2learn (``benchmarks/maml_l2l.py``, 2 threads), each in a subprocess.

The FLOPs (``mflop_per_task``): one meta-loss and backward (no optimizer step) over the meta-batch, counted
by ``torch.utils.flop_counter.FlopCounterMode`` on the per-task loop path (convolutions, their backward and
double backward, matmuls; elementwise work is not counted, so the count is a lower bound of the work). The
vectorised path computes the same mathematics; the counter miscounts its grouped convolutions (its
convolution-backward formula ignores groups), so the loop path is the one counted.

Prints one JSON line per round and config/order, then a summary object (medians over rounds): learn2learn,
3x learn2learn (issue 3's CPU target), metashot, the bound, and target / bound (> 1: the target asks for
more FLOPs per second than the machine's best kernel delivers).

    pip download --no-deps learn2learn==0.2.0 -d /tmp/l2l
    tar xzf /tmp/l2l/learn2learn-0.2.0.tar.gz -C /tmp/l2l
    python benchmarks/maml_roofline.py --l2l-src /tmp/l2l/learn2learn-0.2.0 --rounds 3   # idle machine, 4 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from maml import CONFIGS  # noqa: E402  (benchmarks/maml.py: the same configs)

BEST_PATH = {"A": "vectorized", "B": "loop"}  # metashot's fastest CPU path per config (RESULTS.md)


def maml_mflop_per_task(config: str, first_order: bool) -> float:
    """MFLOPs of one meta-loss + backward on the loop path, per task."""
    from metashot.algorithms.maml import MAML
    from metashot.data.episodes import EpisodeBatch
    from metashot.nn.backbones import maml_omniglot

    c = CONFIGS[config]
    T, N, K, Q = c["meta_batch"], c["ways"], c["shots"], c["queries"]
    torch.manual_seed(0)
    learner = MAML(maml_omniglot(1, 64, N), inner_lr=c["inner_lr"], inner_steps=c["steps"],
                   first_order=first_order, vectorized=False)
    learner.train()
    sx, qx = torch.rand(T, N * K, 1, 28, 28), torch.rand(T, N * Q, 1, 28, 28)
    sy = torch.arange(N).repeat_interleave(K).expand(T, -1)
    qy = torch.arange(N).repeat_interleave(Q).expand(T, -1)
    batch = EpisodeBatch(sx, sy, qx, qy, torch.zeros(T, N, dtype=torch.long), N, K, Q)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = learner.meta_loss(batch)
        loss.backward()
    return counter.get_total_flops() / T / 1e6


def conv_rate(streams: int, threads: int, batch: int = 75, reps: int = 20) -> float:
    """GFLOP/s of the layer-2 convolution's forward + both gradients, ``streams`` Python threads each running
    its own tensors with ``threads`` intra-op threads; best of 3 timings of ``reps`` calls per stream."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(batch, 64, 14, 14, generator=gen, requires_grad=True),
             torch.randn(64, 64, 3, 3, generator=gen, requires_grad=True)) for _ in range(streams)]
    flops = 3 * 2 * batch * 7 * 7 * 64 * 64 * 9  # forward, input gradient, weight gradient

    def run(k: int) -> None:
        x, w = data[k]
        for _ in range(reps):
            y = torch.nn.functional.conv2d(x, w, stride=2, padding=1)
            torch.autograd.grad(y.sum(), [x, w])

    best = float("inf")
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(run, range(streams)))  # warm-up
        for _ in range(3):
            t0 = time.perf_counter()
            list(pool.map(run, range(streams)))
            best = min(best, time.perf_counter() - t0)
    return flops * reps * streams / best / 1e9


def _run_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--l2l-src", type=Path, default=None,
                   help="unpacked learn2learn sdist (benchmarks/maml_l2l.py); without it, no learn2learn")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--configs", nargs="+", default=sorted(CONFIGS), choices=sorted(CONFIGS))
    p.add_argument("--cores", type=int, default=os.cpu_count())
    a = p.parse_args(argv)
    cases = [(c, fo) for c in a.configs for fo in (False, True)]
    mflop = {case: maml_mflop_per_task(*case) for case in cases}
    rows: dict[tuple[str, bool], list[dict]] = {case: [] for case in cases}
    for r in range(a.rounds):
        for config, fo in cases:
            iters = ["--iters", "20" if config == "A" else "3"]
            order = ["--first-order"] if fo else []
            ours = _run_json([sys.executable, str(HERE / "maml.py"), "--config", config, *order, "--path",
                              BEST_PATH[config], "--threads", "1", "--task-workers", str(a.cores), *iters])
            peak = max(conv_rate(a.cores, 1), conv_rate(1, a.cores))
            work = mflop[config, fo]
            row = {"round": r + 1, "config": config, "first_order": fo, "mflop_per_task": round(work, 1),
                   "peak_gflops": round(peak, 1), "bound_tasks_per_s": round(peak * 1e3 / work, 2),
                   "metashot_tasks_per_s": ours["tasks_per_s"], "metashot_path": BEST_PATH[config]}
            if a.l2l_src is not None:
                l2l_iters = ["--iters", "10" if config == "A" else "2"]
                peer = _run_json([sys.executable, str(HERE / "maml_l2l.py"), "--l2l-src", str(a.l2l_src),
                                  "--config", config, *order, "--threads", str(a.cores), *l2l_iters])
                row["learn2learn_tasks_per_s"] = peer["tasks_per_s"]
            row["load_avg_1min"] = round(os.getloadavg()[0], 2)
            rows[config, fo].append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for (config, fo), rs in rows.items():
        def med(key: str, rs: list[dict] = rs) -> float:
            return round(statistics.median(x[key] for x in rs), 2)

        s = {"mflop_per_task": rs[0]["mflop_per_task"], "peak_gflops": med("peak_gflops"),
             "bound_tasks_per_s": med("bound_tasks_per_s"),
             "metashot_tasks_per_s": med("metashot_tasks_per_s"),
             "metashot_over_bound": round(statistics.median(x["metashot_tasks_per_s"] / x["bound_tasks_per_s"]
                                                            for x in rs), 3)}
        if a.l2l_src is not None:
            s.update(learn2learn_tasks_per_s=med("learn2learn_tasks_per_s"),
                     target_3x_tasks_per_s=round(3 * med("learn2learn_tasks_per_s"), 2),
                     target_over_bound=round(statistics.median(3 * x["learn2learn_tasks_per_s"]
                                                               / x["bound_tasks_per_s"] for x in rs), 3),
                     metashot_over_learn2learn=round(statistics.median(
                         x["metashot_tasks_per_s"] / x["learn2learn_tasks_per_s"] for x in rs), 2))
        summary[f"{config}-{'first' if fo else 'second'}-order"] = s
    out = {"benchmark": "maml-roofline", "cores": a.cores, "rounds": a.rounds, "torch": torch.__version__,
           "summary": summary}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
