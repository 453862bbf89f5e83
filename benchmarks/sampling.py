"""Episode sampling speed: Omniglot N-way K-shot Q-query episodes drawn from the class store, one CPU thread.

Prints one JSON object. ``episodes_per_s`` is the rate at ``--tasks-per-batch`` episodes per ``sample()``
call (the way the Trainer draws a meta-batch); ``episodes_per_s_one_per_call`` is the rate when every call
draws a single episode; the ``episodes_per_cpu_s*`` twins divide by this process's CPU time instead of wall
time. ``setup_s`` is the time to load the (already cached) store and build the sampler, in this process
after imports; ``import_s`` is the time to import metashot's data layer (torch included).

    python benchmarks/sampling.py                       # 5-way 1-shot 1-query, Vinyals train split
    python benchmarks/sampling.py --ways 20 --shots 5 --queries 15 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

t_import = time.perf_counter()
import torch  # noqa: E402  (timed on purpose)

from metashot.data.episodes import EpisodeSampler  # noqa: E402
from metashot.data.omniglot import omniglot  # noqa: E402

IMPORT_S = time.perf_counter() - t_import


def rate(sampler: EpisodeSampler, seconds: float) -> tuple[float, float, int]:
    """(episodes per wall second, episodes per CPU second of this process, calls) over about ``seconds`` of
    back-to-back ``sample(i)`` calls after a warm-up. On a shared machine the CPU-time rate is the one that
    does not depend on what else runs."""
    for i in range(20):
        sampler.sample(i)
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(50):  # check the clock every 50 calls, not every call
            sampler.sample(calls)
            calls += 1
        now = time.perf_counter()
        if now >= deadline:
            break
    episodes = calls * sampler.tasks_per_batch
    return episodes / (now - start), episodes / (time.process_time() - cpu_start), calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="train")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=1)
    p.add_argument("--tasks-per-batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per setting")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    store = omniglot(a.split)
    batched = EpisodeSampler(store, a.ways, a.shots, a.queries, seed=a.seed,
                             tasks_per_batch=a.tasks_per_batch)
    setup_s = time.perf_counter() - t0
    single = EpisodeSampler(store, a.ways, a.shots, a.queries, seed=a.seed, tasks_per_batch=1)

    eps_batched, cpu_batched, calls_batched = rate(batched, a.seconds)
    eps_single, cpu_single, calls_single = rate(single, a.seconds)
    print(json.dumps({
        "benchmark": "episode_sampling",
        "dataset": f"omniglot/{a.split}",
        "classes": store.num_classes,
        "ways": a.ways, "shots": a.shots, "queries": a.queries,
        "tasks_per_batch": a.tasks_per_batch,
        "episodes_per_s": round(eps_batched, 1),
        "episodes_per_s_one_per_call": round(eps_single, 1),
        "episodes_per_cpu_s": round(cpu_batched, 1),
        "episodes_per_cpu_s_one_per_call": round(cpu_single, 1),
        "calls": {"batched": calls_batched, "one_per_call": calls_single},
        "setup_s": round(setup_s, 3),
        "import_s": round(IMPORT_S, 3),
        "threads": torch.get_num_threads(),
        "seed": a.seed,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
                   f"{platform.python_version()}, torch {torch.__version__}",
    }))


if __name__ == "__main__":
    main()
