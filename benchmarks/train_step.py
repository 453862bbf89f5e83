"""Meta-training step speed: ProtoNet and MAML Omniglot training steps through the shared Trainer.

Prints one JSON object with, per algorithm, ``steps_per_s`` and ``episodes_per_s`` measured over
``--steps`` back-to-back ``Trainer.train_step()`` calls after ``--warmup`` steps: each step samples its
meta-batch from the Omniglot (Vinyals train split) class store, moves it to the device, runs ``meta_loss``
forward and backward and takes an Adam step, exactly as in training. The config's GPU options are flags here.

Presets (the published settings, with the full-size networks):
- protonet: conv4 (64 channels), 60-way 1-shot 5-query, one episode per step (Snell et al. 2017).
- maml: the MAML Omniglot net (4 x conv 64, stride 2), 5-way 1-shot 1-query, 32 episodes per step, one
  second-order inner step with lr 0.4 (Finn et al. 2017). Skipped with a note when ``algorithms/maml.py``
  is not there.

    python benchmarks/train_step.py                         # CPU, one thread
    python benchmarks/train_step.py --device cuda --data-on-device --precision bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from typing import Any

import torch

from metashot.algorithms.base import available_algorithms
from metashot.checkpoint import build_learner
from metashot.config import Config
from metashot.data import load_split
from metashot.data.device import DeviceSampler
from metashot.data.episodes import EpisodeSampler
from metashot.train import Trainer

PRESETS: dict[str, dict[str, Any]] = {
    "protonet": {
        "model": {"algorithm": "protonet", "backbone": "conv4",
                  "backbone_args": {"in_channels": 1, "hidden": 64, "out_channels": 64}},
        "episodes": {"ways": 60, "shots": 1, "queries": 5, "meta_batch": 1},
    },
    "maml": {
        "model": {"algorithm": "maml", "backbone": "maml_omniglot",
                  "backbone_args": {"in_channels": 1, "hidden": 64, "out_features": 5},
                  "algorithm_args": {"inner_lr": 0.4, "inner_steps": 1}},
        "episodes": {"ways": 5, "shots": 1, "queries": 1, "meta_batch": 32},
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, store: Any, a: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    """Steps per second of one algorithm's training step."""
    preset = PRESETS[name]
    cfg = Config.from_dict({
        "name": f"bench-{name}", **preset,
        "train": {"device": a.device, "precision": a.precision, "compile": a.compile,
                  "data_on_device": a.data_on_device, "pin_memory": a.pin_memory, "lr_schedule": "constant",
                  "steps": a.warmup + a.steps, "seed": 0},
    })
    device = torch.device(a.device)
    torch.manual_seed(0)
    learner = build_learner(dict(cfg.model.__dict__))
    ep = cfg.episodes
    sampler = EpisodeSampler(store, ep.ways, ep.shots, ep.queries, seed=0, tasks_per_batch=ep.meta_batch)
    source: Any = DeviceSampler(sampler, device) if a.data_on_device else sampler
    trainer = Trainer(learner, source, cfg, None, out_dir=out_dir, progress=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(a.warmup):
        trainer.train_step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        m = trainer.train_step()
    _sync(device)
    dt = time.perf_counter() - t0
    out = {"steps_per_s": round(a.steps / dt, 2), "episodes_per_s": round(a.steps * ep.meta_batch / dt, 1),
           "ms_per_step": round(1000 * dt / a.steps, 3), "warmup_s": round(warm_s, 2),
           "last_loss": round(m["loss"], 4), "ways": ep.ways, "shots": ep.shots, "queries": ep.queries,
           "meta_batch": ep.meta_batch, "backbone": cfg.model.backbone,
           "parameters": sum(p.numel() for p in learner.parameters())}
    if device.type == "cuda":
        out["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--algorithms", default="protonet,maml", help="comma-separated: protonet, maml")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the meta_loss")
    p.add_argument("--data-on-device", action="store_true", help="keep the store's images on the device")
    p.add_argument("--pin-memory", action="store_true", help="pinned host batches, non_blocking copies")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: shared machines)")
    p.add_argument("--sweep", action="store_true",
                   help="one process, four variants: host batches, pinned host batches, store on the device, "
                        "store on the device + bf16 (ignores the four option flags above)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    store = load_split("omniglot", "train")
    report: dict[str, Any] = {
        "benchmark": "train_step", "device": a.device,
        "device_name": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor()
        or platform.machine(),
        "torch": torch.__version__, "threads": a.threads, "precision": a.precision, "compile": a.compile,
        "data_on_device": a.data_on_device, "pin_memory": a.pin_memory, "steps": a.steps, "warmup": a.warmup,
        "store_load_s": round(time.perf_counter() - t0, 2), "results": {},
    }
    if not a.sweep:
        report["results"] = run_all(store, a)
    else:
        for k in ("precision", "compile", "data_on_device", "pin_memory", "results"):
            report.pop(k)
        report["variants"] = {}
        for variant, opts in SWEEP.items():
            results = run_all(store, argparse.Namespace(**{**vars(a), **opts}))
            report["variants"][variant] = {"options": opts, "results": results}
    print(json.dumps(report))


SWEEP: dict[str, dict[str, Any]] = {
    "host": {"precision": "fp32", "compile": False, "data_on_device": False, "pin_memory": False},
    "host_pinned": {"precision": "fp32", "compile": False, "data_on_device": False, "pin_memory": True},
    "on_device": {"precision": "fp32", "compile": False, "data_on_device": True, "pin_memory": False},
    "on_device_bf16": {"precision": "bf16", "compile": False, "data_on_device": True, "pin_memory": False},
}


def run_all(store: Any, a: argparse.Namespace) -> dict[str, Any]:
    """``bench`` for every algorithm of ``--algorithms``; a failure is recorded, not raised."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [s.strip() for s in a.algorithms.split(",") if s.strip()]:
            if name not in PRESETS:
                raise SystemExit(f"train_step.py: unknown algorithm {name!r}; choose from {sorted(PRESETS)}")
            if name not in available_algorithms():
                results[name] = {"skipped": f"algorithm {name!r} is not registered "
                                            f"(metashot/algorithms/{name}.py missing)"}
                continue
            try:
                results[name] = bench(name, store, a, tmp)
            except Exception as e:  # one failing variant (e.g. compile) must not hide the others
                results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return results


if __name__ == "__main__":
    main()
