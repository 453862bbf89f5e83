"""The task-worker threads shared by MAML (``task_workers``) and meta-RL (``algo.fvp_workers``)."""

from __future__ import annotations

import threading

import torch
from torch import nn

from metashot.nn.threads import in_workers, module_for, structure_replicas, task_chunks, task_pool


def test_task_chunks_cover_the_tasks_in_order() -> None:
    assert task_chunks(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert task_chunks(2, 5) == [(0, 1), (1, 2)]
    assert task_chunks(4, 1) == [(0, 4)]


def test_in_workers_keeps_job_order_grad_mode_and_autocast() -> None:
    def job(k: int):  # noqa: ANN202
        return lambda: (k, threading.current_thread().name, torch.is_grad_enabled(),
                        torch.is_autocast_enabled("cpu"))

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = in_workers([job(k) for k in range(3)])
    assert [o[0] for o in out] == [0, 1, 2]
    assert all(name.startswith("metashot-task") and not grad and cast for _, name, grad, cast in out)
    assert all(o[2] for o in in_workers([job(k) for k in range(3)], grad=True))
    assert task_pool(3) is task_pool(3)  # one pool per worker count, for MAML and the RL curvature alike


def test_structure_replicas_and_module_for() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    cache: list[tuple[nn.Module, nn.Module]] = []
    reps = structure_replicas(net, cache, 2)
    assert len(reps) == 2 and all(next(r.parameters()).is_meta for r in reps)
    assert structure_replicas(net, cache, 2) == reps  # kept while the module is the same
    other = nn.Sequential(nn.Linear(3, 2))
    assert structure_replicas(other, cache, 1)[0] is not reps[0] and len(cache) == 1
    assert module_for(cache, net) is net  # outside a worker: the module itself
