"""Meta-training (MAML-TRPO) and evaluation of RL policies: ``metashot rl train`` / ``metashot rl eval``.

A run folder holds ``config.yaml``, ``metrics.jsonl`` (one JSON record per iteration), ``last/`` (written
every ``checkpoint_every`` iterations and on SIGTERM/SIGINT, resumable bit for bit with ``--resume``: every
iteration's tasks and action noise come from a generator seeded by (seed, iteration)) and ``final/``.
Checkpoints are the library's folders (``weights.safetensors`` + ``config.json`` with the SHA-256).

Iteration i: sample ``meta_batch`` tasks; for each inner step k sample ``trajectories`` trajectories per task
with the current (adapted) policy and take a VPG step; sample the post-update trajectories; one TRPO step of
the meta-parameters on the post-update surrogate through the inner loop. ``inner_steps = 0`` is multi-task
TRPO without adaptation (the paper's "pretrained" baseline; with ``env.options.observe_goal``, its "oracle").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metashot.checkpoint import CheckpointError, read_meta, read_weights, resolve, save_module
from metashot.config import RunConfig, read_yaml
from metashot.nn.functional import Params
from metashot.rl.adaptation import MetaBatch, adapt, meta_objective
from metashot.rl.curvature import ChainCurvature, gauss_newton_fvp
from metashot.rl.envs import make_env
from metashot.rl.policy import GaussianMLPPolicy, policy_dist, policy_params
from metashot.rl.rollout import process, rollout
from metashot.rl.trpo import TRPOConfig, trpo_step
from metashot.runs import FINAL, LAST, RunDir

RL_KIND = "rl-policy"


@dataclass
class RLEnvConfig:
    name: str = "navigation2d"  # navigation2d | halfcheetah-vel | halfcheetah-dir
    horizon: int | None = None  # None: 100 for navigation, 200 for the cheetah
    options: dict[str, Any] = field(default_factory=dict)  # navigation2d: observe_goal (the oracle)


@dataclass
class RLPolicyConfig:
    hidden: list[int] = field(default_factory=lambda: [100, 100])
    init_std: float = 1.0


@dataclass
class RLAlgoConfig:
    inner_steps: int = 1  # 0 = no adaptation in training (pretrained / oracle baselines)
    inner_lr: float | list[float] = 0.1  # one step size, or one per inner step (the last repeats)
    first_order: bool = False
    meta_batch: int = 20  # tasks per iteration
    trajectories: int = 20  # per task and per inner step
    discount: float = 0.99
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    vectorized: bool = True  # vmap over tasks (False: the per-task reference loop)
    # Fisher-vector products: "double-backward" (Hessian of the KL by autograd, the reference) or
    # "gauss-newton" (J^T M J with J linearised once; the same product at the sampling point; needs
    # vectorized) or "chain" (sum_i J_i^T F_i J_i through the inner loop: the same product, and the
    # meta-gradient, from quantities computed once per step; the fastest on a CPU; see
    # metashot.rl.curvature.ChainCurvature)
    fvp: str = "double-backward"
    fvp_workers: int = 1  # "chain" only: threads over chunks of tasks (2-core CPU: 2, with train.threads 1)


@dataclass
class RLTrainConfig:
    iterations: int = 100
    seed: int = 0
    threads: int = 1  # small matmuls: one thread is fastest on a CPU
    device: str = "cpu"
    checkpoint_every: int = 10
    out_dir: str | None = None


@dataclass
class RLEvalConfig:
    tasks: int = 40
    trajectories: int = 40
    steps: int = 3
    inner_lr: list[float] = field(default_factory=lambda: [0.1])  # per adaptation step; the last repeats
    seed: int = 1234


@dataclass
class RLConfig(RunConfig):
    name: str = "maml-trpo"
    env: RLEnvConfig = field(default_factory=RLEnvConfig)
    policy: RLPolicyConfig = field(default_factory=RLPolicyConfig)
    algo: RLAlgoConfig = field(default_factory=RLAlgoConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)

    def validate(self, where: str) -> None:
        a, t, e = self.algo, self.train, self.eval
        if isinstance(e.inner_lr, (int, float)) and not isinstance(e.inner_lr, bool):
            e.inner_lr = [float(e.inner_lr)]
        for name, v, lo in (("algo.inner_steps", a.inner_steps, 0), ("algo.meta_batch", a.meta_batch, 1),
                            ("algo.trajectories", a.trajectories, 1), ("algo.cg_iters", a.cg_iters, 1),
                            ("algo.fvp_workers", a.fvp_workers, 1),
                            ("train.iterations", t.iterations, 0), ("train.threads", t.threads, 1),
                            ("eval.tasks", e.tasks, 1), ("eval.trajectories", e.trajectories, 1),
                            ("eval.steps", e.steps, 0)):
            if v < lo:
                raise ValueError(f"{where}: {name} must be >= {lo}, got {v}")
        if a.fvp not in ("double-backward", "gauss-newton", "chain"):
            raise ValueError(f"{where}: algo.fvp must be 'double-backward', 'gauss-newton' or 'chain', "
                             f"got {a.fvp!r}")
        if a.fvp_workers > 1 and a.fvp != "chain":
            raise ValueError(f"{where}: algo.fvp_workers > 1 needs algo.fvp 'chain', got {a.fvp!r}")
        if a.fvp == "gauss-newton" and not a.vectorized:
            raise ValueError(f"{where}: algo.fvp 'gauss-newton' needs algo.vectorized true")
        if a.max_kl <= 0 or not 0 < a.backtrack_ratio < 1 or not 0 < a.discount <= 1:
            raise ValueError(f"{where}: need algo.max_kl > 0, 0 < backtrack_ratio < 1, 0 < discount <= 1")
        lrs = a.inner_lr if isinstance(a.inner_lr, list) else [a.inner_lr]
        if not lrs or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in lrs):
            raise ValueError(f"{where}: algo.inner_lr must be a number or a non-empty list of positive "
                             f"numbers, got {a.inner_lr!r}")
        if not e.inner_lr or not all(isinstance(x, (int, float)) for x in e.inner_lr):
            raise ValueError(f"{where}: eval.inner_lr must be a non-empty list of numbers, got "
                             f"{e.inner_lr!r}")
        if not self.policy.hidden or not all(isinstance(h, int) and h > 0 for h in self.policy.hidden):
            raise ValueError(f"{where}: policy.hidden must be a list of positive integers")

    def make_env(self) -> Any:
        return make_env(self.env.name, self.env.horizon, **self.env.options)


def load_rl_config(path: str | Path, overrides: list[str] | None = None) -> RLConfig:
    """Read a meta-RL YAML preset with ``key.sub=value`` overrides."""
    return RLConfig.from_dict(read_yaml(path, overrides), source=str(path))


def make_policy(cfg: RLConfig, env: Any, seed: int) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    return GaussianMLPPolicy(env.obs_dim, env.act_dim, cfg.policy.hidden, cfg.policy.init_std)


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator of iteration i's tasks and action noise: a function of (seed, i) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + iteration * 7_919 + 12_345) % (2**62))


def save_policy(path: Path, policy: GaussianMLPPolicy, cfg: RLConfig, iteration: int,
                extra: dict[str, Any] | None = None) -> Path:
    # the iteration is all that --resume needs besides the weights (each iteration's randomness is seeded)
    meta = {"kind": RL_KIND, "iteration": iteration, **(extra or {})}
    return save_module(path, policy, cfg.to_dict(), RL_KIND, policy.config_dict(), extra=meta)


def load_policy(name_or_path: str | Path, device: str = "cpu") -> tuple[GaussianMLPPolicy, RLConfig, dict]:
    """(policy, its run config, checkpoint meta) of an RL checkpoint (folder, run folder or bundled name)."""
    path = resolve(name_or_path)
    meta = read_meta(path)
    if meta.get("kind") != RL_KIND:
        raise CheckpointError(f"checkpoint {path} is not an RL policy (metashot rl train); for classifiers "
                              f"use metashot eval")
    state = read_weights(path, meta, device)
    args = meta["learner_args"]
    policy = GaussianMLPPolicy(args["obs_dim"], args["act_dim"], args["hidden"], args["init_std"])
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: weights do not match the policy in config.json: "
                              f"{str(e).splitlines()[0]}") from e
    return policy.to(device), RLConfig.from_dict(meta["config"], source=str(path)), meta


def sample_meta_batch(env: Any, policy: GaussianMLPPolicy, params: Params, cfg: RLConfig,
                      generator: torch.Generator) -> tuple[MetaBatch, dict[str, float]]:
    """Tasks, inner-loop trajectories and post-update trajectories of one meta-iteration."""
    a = cfg.algo
    tasks = env.sample_tasks(a.meta_batch, generator)
    inner, stats = [], {}
    cur, per_task = params, False
    for k in range(a.inner_steps):
        traj = rollout(env, policy, cur, tasks, a.trajectories, generator, per_task=per_task)
        stats[f"return_{k}"] = float(traj.returns().mean())
        inner.append(process(traj, a.discount))
        cur = {n: v.detach() for n, v in adapt(policy, params, inner, a.inner_lr, first_order=True,
                                                  vectorized=a.vectorized).items()}
        per_task = True
    traj = rollout(env, policy, cur, tasks, a.trajectories, generator, per_task=per_task)
    stats[f"return_{a.inner_steps}"] = float(traj.returns().mean())
    post = process(traj, a.discount)
    with torch.no_grad():
        old_mean, old_log_std = policy_dist(policy, cur, post.obs, per_task=per_task)
    return MetaBatch(inner, post, old_mean, old_log_std), stats


def meta_step(env: Any, policy: GaussianMLPPolicy, params: Params, cfg: RLConfig,
              generator: torch.Generator) -> tuple[Params, dict[str, float]]:
    """One MAML-TRPO iteration; returns the new meta-parameters and the iteration's statistics."""
    a = cfg.algo
    t0 = time.perf_counter()
    mb, stats = sample_meta_batch(env, policy, params, cfg, generator)
    t1 = time.perf_counter()

    def objective(p: Params, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return meta_objective(policy, p, mb, a.inner_lr, first_order=a.first_order or not create_graph,
                              vectorized=a.vectorized)

    trpo = TRPOConfig(a.max_kl, a.cg_iters, a.cg_damping, a.backtrack_ratio, a.max_backtracks)
    fvp = None
    if a.fvp == "gauss-newton":
        fvp = gauss_newton_fvp(policy, params, mb, a.inner_lr, a.first_order, a.cg_damping)
    if a.fvp == "chain":
        with ChainCurvature(policy, params, mb, a.inner_lr, a.first_order, a.cg_damping,
                            a.fvp_workers) as curv:
            new, tstats = trpo_step(curv.evaluate, params, trpo, curv,
                                    loss_grad=(curv.loss, curv.gradient()), reuse_cg_product=True)
    else:
        new, tstats = trpo_step(objective, params, trpo, fvp)
    t2 = time.perf_counter()
    stats.update(tstats, sample_s=t1 - t0, trpo_s=t2 - t1)
    return new, stats


def train_rl(cfg: RLConfig, progress: bool = True, resume: str | Path | None = None) -> dict[str, Any]:
    """Meta-train ``cfg``; returns a summary (run folder, iterations, final returns, wall time).

    Writes the run folder ``cfg.out_dir()`` (:class:`metashot.runs.RunDir`, metrics keyed by ``iteration``)
    and holds its lock; a fresh run in a used folder removes the old run's checkpoints and summary first,
    with a warning. ``resume``: the run folder (or checkpoint) whose ``last/`` to continue from."""
    run = RunDir(cfg.out_dir(), step_key="iteration")
    with run.lock():
        return _train_rl(cfg, run, progress, resume)


def _train_rl(cfg: RLConfig, run: RunDir, progress: bool, resume: str | Path | None) -> dict[str, Any]:
    torch.set_num_threads(cfg.train.threads)
    run.start(cfg.to_dict(), fresh=resume is None)  # fresh: nothing of an old run in the folder stays
    env = cfg.make_env()
    policy = make_policy(cfg, env, cfg.train.seed).to(cfg.train.device)
    start, elapsed0 = 0, 0.0
    if resume is not None:
        source = RunDir(resume)
        source.recover((LAST,))  # a write of last/ killed between its renames
        last_dir = source.checkpoint(LAST)
        loaded, _, meta = load_policy(last_dir if last_dir.is_dir() else resume, cfg.train.device)
        policy.load_state_dict(loaded.state_dict())
        start, elapsed0 = int(meta["iteration"]), float(meta.get("elapsed_s", 0.0))
        run.truncate_metrics(start)  # records after the checkpoint are redone
    params = policy_params(policy)
    t_start = time.perf_counter()
    last: dict[str, float] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.iterations, initial=start, desc=cfg.name, unit="it")
    it = start
    sig = None
    # a second SIGINT/SIGTERM does not abort: the iteration in flight ends and last/ is written
    with run.stop_signals(second_aborts=False):
        while it < cfg.train.iterations:
            gen = iteration_generator(cfg.train.seed, it)
            params, stats = meta_step(env, policy, params, cfg, gen)
            if not all(math.isfinite(v.detach().sum().item()) for v in params.values()):
                raise RuntimeError(f"{cfg.name}: non-finite policy parameters at iteration {it + 1}")
            it += 1
            elapsed = elapsed0 + time.perf_counter() - t_start
            last = {"iteration": it, **stats, "elapsed_s": round(elapsed, 3)}
            run.log(last)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(pre=f"{stats['return_0']:.1f}",
                                post=f"{stats[f'return_{cfg.algo.inner_steps}']:.1f}")
            with torch.no_grad():
                for n, p in policy.named_parameters():
                    p.copy_(params[n])
            sig = run.signal
            if sig is not None or (cfg.train.checkpoint_every and it % cfg.train.checkpoint_every == 0):
                save_policy(run.checkpoint(LAST), policy, cfg, it, {"elapsed_s": elapsed})
            if sig is not None:
                break
    if bar is not None:
        bar.close()
    env.close()
    wall = round(elapsed0 + time.perf_counter() - t_start, 1)
    summary = {"run_dir": str(run.path), "iterations": it, "wall_s": wall,
               **{k: v for k, v in last.items() if k.startswith("return_")}}
    if sig is not None:
        summary["signal"] = sig
        return summary
    save_policy(run.checkpoint(LAST), policy, cfg, it, {"elapsed_s": summary["wall_s"]})
    save_policy(run.checkpoint(FINAL), policy, cfg, it, {"elapsed_s": summary["wall_s"]})
    run.write_summary(summary)
    return summary
