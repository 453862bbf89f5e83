"""Multi-process and multi-node meta-training with ``torch.distributed`` (launched by ``torchrun``).

Data parallelism over the meta-batch: batch ``i`` holds T episodes (a pure function of ``(seed, i)``);
rank ``r`` of ``W`` takes the contiguous slice ``task_slice(T)`` of them, computes the mean loss of its share
and its gradients, and :meth:`DistContext.all_reduce_` sums ``(n_r / T) * grad_r`` over ranks, which is the
gradient of the mean loss over all T episodes whenever ``meta_loss`` is a mean over tasks. The reduction is an
explicit ``all_reduce`` of the ``.grad`` tensors after ``backward()``, not DistributedDataParallel's hooks, so
functional inner loops (MAML's ``functional_call`` over parameter dicts) need nothing special.

Floating-point buffers (batch-norm running statistics) are averaged over ranks in the same collective, so
every rank holds identical parameters and buffers after each step; the per-step metrics and the stop flag
(a signal received on any rank) travel in the same buffer, so all ranks agree on when to stop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Where this process sits in the job: ``rank`` of ``world_size``; ``local_rank`` picks its GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main rank (0) writes logs and checkpoints."""
        return self.rank == 0

    @classmethod
    def current(cls) -> DistContext:
        """The context of an initialised default process group, or a single-process context."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return cls()

    def device(self, name: str) -> torch.device:
        """The device ``name`` (``train.device``); a bare ``cuda`` under torch.distributed: this rank's."""
        dev = torch.device(name)
        if dev.type == "cuda" and dev.index is None and self.enabled:
            dev = torch.device("cuda", self.local_rank)
        return dev

    def task_slice(self, tasks: int) -> slice:
        """This rank's contiguous share of ``tasks`` episodes (sizes differ by at most one).

        Raises:
            ValueError: if there are fewer episodes than ranks (a rank would have nothing to do).
        """
        if tasks < self.world_size:
            raise ValueError(
                f"distributed training: episodes.meta_batch={tasks} is smaller than the world size "
                f"{self.world_size}; every rank needs at least one episode. Raise episodes.meta_batch to a "
                f"multiple of {self.world_size}"
            )
        base, extra = divmod(tasks, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def broadcast_parameters_(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (identical starting points)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def all_reduce_(
        self,
        params: list[torch.nn.Parameter],
        buffers: list[torch.Tensor],
        weight: float,
        scalars: list[float],
    ) -> list[float]:
        """One collective per step: weighted gradient sum, buffer mean and scalar sums.

        Args:
            params: parameters whose ``.grad`` becomes ``sum_r weight_r * grad_r`` (missing grad = 0).
            buffers: floating-point buffers, replaced by their mean over ranks.
            weight: this rank's share of the meta-batch, ``n_r / T``.
            scalars: per-rank numbers to sum over ranks (pre-weighted metrics, flags).

        Returns:
            The summed scalars (identical on every rank).
        """
        if not self.enabled:
            return list(scalars)
        dev = params[0].device if params else torch.device("cpu")
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        parts = [g.detach().reshape(-1).float() * weight for g in grads]
        parts += [b.detach().reshape(-1).float() / self.world_size for b in buffers]
        parts.append(torch.tensor(scalars, dtype=torch.float32, device=dev))
        flat = torch.cat(parts)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        i = 0
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                n = g.numel()
                p.grad = flat[i : i + n].view_as(g).to(g.dtype).clone()
                i += n
            for b in buffers:
                n = b.numel()
                b.copy_(flat[i : i + n].view_as(b))
                i += n
        return flat[i:].tolist()

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (small control data such as a validation result)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_from_env(device: str = "cpu", backend: str | None = None) -> DistContext:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables torchrun sets. The backend is
    ``backend`` or NCCL for CUDA devices and gloo otherwise. Without torchrun it returns a single-process
    context and initialises nothing.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank)


def shutdown() -> None:
    """Destroy the default process group if this process created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
