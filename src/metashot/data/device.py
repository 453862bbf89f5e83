"""Episodes gathered on the accelerator (``train.data_on_device``) and pinned host batches
(``train.pin_memory``)."""

from __future__ import annotations

import torch

from metashot.data.episodes import EpisodeBatch, EpisodeSampler


class DeviceSampler:
    """An :class:`EpisodeSampler` whose store images live on ``device`` (``train.data_on_device``).

    The episode indices still come from ``sampler.indices(i)`` (CPU, numpy), so the episodes are identical to
    ``sampler.sample(i)``; only the gather runs on the device, and no image crosses the bus per step.
    """

    def __init__(self, sampler: EpisodeSampler, device: torch.device | str) -> None:
        self.sampler = sampler
        self.device = torch.device(device)
        self.images = sampler.store.images.to(self.device)
        self.tasks_per_batch = sampler.tasks_per_batch
        self.seed = sampler.seed

    def sample(self, batch_index: int, tasks: slice | None = None) -> EpisodeBatch:
        """Batch ``batch_index`` (uint8 images on the device); ``tasks`` selects a slice of its episodes."""
        classes, rows = self.sampler.indices(batch_index)
        if tasks is not None:
            classes, rows = classes[tasks], rows[tasks]
        T, N = classes.shape
        K, Q = self.sampler.shots, self.sampler.queries
        flat = torch.from_numpy(rows.reshape(-1)).to(self.device, non_blocking=True)
        x = self.images.index_select(0, flat).view(T, N, K + Q, *self.images.shape[1:])
        ys = torch.arange(N, device=self.device).repeat_interleave(K).expand(T, -1)
        yq = torch.arange(N, device=self.device).repeat_interleave(Q).expand(T, -1)
        return EpisodeBatch(
            x[:, :, :K].reshape(T, N * K, *x.shape[3:]),
            ys,
            x[:, :, K:].reshape(T, N * Q, *x.shape[3:]),
            yq,
            torch.from_numpy(classes),
            N,
            K,
            Q,
        )


def pinned(batch: EpisodeBatch) -> EpisodeBatch:
    """``batch`` with its four tensors in pinned (page-locked) host memory, for non-blocking copies."""
    return EpisodeBatch(
        batch.support_x.pin_memory(),
        batch.support_y.pin_memory(),
        batch.query_x.pin_memory(),
        batch.query_y.pin_memory(),
        batch.classes,
        batch.ways,
        batch.shots,
        batch.queries,
    )
