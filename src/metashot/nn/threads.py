"""Threads: the task-worker pools shared by MAML and meta-RL, and fork safety.

Task parallelism (MAML's ``task_workers``, meta-RL's ``algo.fvp_workers``): a meta-batch is split into chunks
of tasks (:func:`task_chunks`) that run concurrently on one process-wide pool of threads per worker count
(:func:`task_pool`, threads named ``metashot-task-*``) through :func:`in_workers`, which gives every worker
the caller's grad mode and autocast state (both are thread-local in torch) and returns the results in chunk
order, so that sums over chunks do not depend on timing. ``torch.func.functional_call`` swaps tensors into the
module object it is given for the duration of a call, which is not safe when two threads share one module: a
worker calls the network through its own replica (:func:`structure_replicas`, :func:`use_module`,
:func:`module_for`).

Fork safety (issue 20). PyTorch's CPU wheels use GNU OpenMP (libgomp), which has no fork handler: a process
that forks after its intra-op thread pool has started (any parallel op with ``torch.get_num_threads() > 1``)
gets a child whose first parallel op waits forever for pool threads that do not exist there (GCC bug 52303).
That is what a DataLoader with workers, ``multiprocessing``'s fork context or a plain ``os.fork`` do.
Re-setting the same thread count in the child does not help; one thread does (PyTorch's own DataLoader workers
do the same). Importing metashot registers :func:`_after_fork_in_child`, so every forked child of a metashot
process runs its torch CPU ops on one thread instead of hanging, and starts with no task pools (it has none of
the parent's threads). ``subprocess`` (fork + exec) is not affected.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")

_WORKER = threading.local()  # .modules: {id(owner): the module this thread calls for that owner}
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()
    try:
        torch.set_num_threads(1)
    except Exception:  # never break a fork over this
        pass


os.register_at_fork(after_in_child=_after_fork_in_child)


def task_pool(workers: int) -> ThreadPoolExecutor:
    """The process-wide pool of ``workers`` threads (made on first use, kept for the process's life)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="metashot-task")
        return _POOLS[workers]


def task_chunks(tasks: int, workers: int) -> list[tuple[int, int]]:
    """``min(workers, tasks)`` contiguous slices (lo, hi) of ``range(tasks)``, their sizes within 1."""
    w = min(workers, tasks)
    return [(i * tasks // w, (i + 1) * tasks // w) for i in range(w)]


def in_workers(jobs: Sequence[Callable[[], T]], grad: bool | None = None) -> list[T]:
    """Run every job concurrently on :func:`task_pool` (``len(jobs)`` threads); their results in job order.

    Each job runs under the caller's autocast state and grad mode (``grad`` overrides the latter). A job must
    not itself wait on the same pool (its thread is one of the pool's).
    """
    grad = torch.is_grad_enabled() if grad is None else grad
    autocasts = [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]

    def run(job: Callable[[], T]) -> T:
        with contextlib.ExitStack() as stack:
            for device, dtype in autocasts:
                stack.enter_context(torch.autocast(device, dtype=dtype))
            stack.enter_context(torch.set_grad_enabled(grad))
            return job()

    futures = [task_pool(len(jobs)).submit(run, job) for job in jobs]
    return [f.result() for f in futures]


def structure_replicas(module: nn.Module, cache: list[tuple[nn.Module, nn.Module]],
                       count: int) -> list[nn.Module]:
    """``count`` structure-only copies of ``module`` (on the meta device: they hold no data, every parameter
    and buffer is passed in at each functional call), kept in ``cache`` as (module, copy) pairs and made
    again when ``module`` is no longer the one they were copied from."""
    if cache and cache[0][0] is not module:
        cache.clear()
    while len(cache) < count:
        cache.append((module, copy.deepcopy(module).to("meta")))
    return [c for _, c in cache[:count]]


@contextlib.contextmanager
def use_module(owner: object, replica: nn.Module, training: Sequence[bool]) -> Iterator[None]:
    """In this thread, :func:`module_for` ``owner`` gives ``replica`` (its modules' train/eval flags set to
    ``training``, the original's ``[m.training for m in module.modules()]``)."""
    for m, flag in zip(replica.modules(), training, strict=True):
        m.training = flag
    modules = _WORKER.__dict__.setdefault("modules", {})
    modules[id(owner)] = replica
    try:
        yield
    finally:
        del modules[id(owner)]


def module_for(owner: object, default: nn.Module) -> nn.Module:
    """The module this thread calls for ``owner``: its replica inside :func:`use_module`, else ``default``."""
    return getattr(_WORKER, "modules", {}).get(id(owner), default)


class GivenGradients(torch.autograd.Function):
    """``value`` whose backward hands each of ``params`` a precomputed gradient (times the incoming one): the
    loss of a task-parallel step whose workers already differentiated their chunks. First order only."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, grads: Sequence[torch.Tensor | None],
                *params: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, None, *[None if g is None else grad_out * g for g in ctx.grads])
