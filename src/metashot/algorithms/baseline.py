"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification")."""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import Batch, MetaLearner, Predictor, register
from metashot.nn.backbones import output_dim

HEADS = ("linear", "cosine")


class LabelledBatch(Batch, Protocol):
    """A :class:`~metashot.algorithms.base.Batch` that also names the store class behind each episode label:
    ``classes`` [T, N] (int64), as an ``EpisodeBatch`` does."""

    classes: torch.Tensor


class CosineHead(nn.Module):
    """Baseline++'s classifier: logits_j = scale * cos(z, w_j), z [B, D] -> [B, classes]."""

    def __init__(self, dim: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * dim ** -0.5)
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(z, dim=-1) @ F.normalize(self.weight, dim=-1).t()


def make_head(kind: str, dim: int, classes: int, scale: float) -> nn.Module:
    return nn.Linear(dim, classes) if kind == "linear" else CosineHead(dim, classes, scale)


@register("baseline")
class Baseline(MetaLearner):
    """Baseline / Baseline++ (Chen et al., ICLR 2019).

    Pre-training: a standard classifier over all C training classes, softmax(W f(x)) with a linear head
    (Baseline) or softmax(s * cos(f(x), w_j)) with a cosine head (Baseline++), trained with cross-entropy.
    Few-shot adaptation: the backbone f is frozen and a NEW head of the same kind over the N support classes
    is fitted on the support set's features (``finetune_epochs`` passes over the support set in shuffled
    minibatches of ``finetune_batch``, SGD with momentum: the paper's 100 epochs with batch 4); the predictor
    is that head on f(query).

    Training through the shared Trainer: ``meta_loss`` reads each episode's items with their *store* class
    index (``batch.classes``), so an EpisodeSampler with many ways is simply a class-balanced minibatch source
    for the pre-training classifier.

    Args:
        backbone: feature extractor f, [B, *item] -> [B, D] (flattened).
        num_classes: C, the number of training classes (store classes are 0..C-1).
        head: ``linear`` (Baseline) or ``cosine`` (Baseline++).
        scale: s of the cosine head.
        finetune_epochs, finetune_lr, finetune_batch: fitting the new head on a support set.
        seed: seed of the fine-tuning minibatch order and head initialisation (adaptation is deterministic).
        input_shape: item shape [C, H, W], used to size the heads.
    """

    adapt_needs_grad = True

    def __init__(self, backbone: nn.Module, num_classes: int = 964, head: str = "linear", scale: float = 10.0,
                 finetune_epochs: int = 100, finetune_lr: float = 0.01, finetune_batch: int = 4,
                 seed: int = 0,
                 input_shape: list[int] | tuple[int, ...] = (1, 28, 28)) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"Baseline: head must be one of {HEADS}, got {head!r}")
        if num_classes < 2:
            raise ValueError(f"Baseline: num_classes must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.num_classes, self.head_kind, self.scale = int(num_classes), head, float(scale)
        self.finetune_epochs, self.finetune_lr = int(finetune_epochs), float(finetune_lr)
        self.finetune_batch, self.seed = int(finetune_batch), int(seed)
        self.input_shape = [int(v) for v in input_shape]
        self.dim = output_dim(backbone, tuple(self.input_shape))
        self.classifier = make_head(head, self.dim, self.num_classes, self.scale)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(1)

    def meta_loss(self, batch: LabelledBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the C-way classifier on every support and query item, labelled by store class."""
        gs = torch.gather(batch.classes.to(batch.support_y.device), 1, batch.support_y)
        gq = torch.gather(batch.classes.to(batch.query_y.device), 1, batch.query_y)
        y = torch.cat([gs.flatten(), gq.flatten()])
        if int(y.max()) >= self.num_classes:
            raise ValueError(f"Baseline: a store class index is {int(y.max())} but num_classes is "
                             f"{self.num_classes}; set algorithm_args.num_classes to the training split's "
                             f"number of classes")
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        logits = self.classifier(self.embed(x))
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc)}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        ways = int(support_y.max()) + 1
        with torch.no_grad():
            zs = self.embed(support_x).detach()
        gen = torch.Generator().manual_seed(self.seed)
        head = make_head(self.head_kind, self.dim, ways, self.scale).to(zs.device)
        with torch.no_grad():  # a seeded initialisation, independent of the global RNG
            for p in head.parameters():
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1).mul_(self.dim ** -0.5).to(p))
        opt = torch.optim.SGD(head.parameters(), lr=self.finetune_lr, momentum=0.9, dampening=0.9,
                              weight_decay=1e-3)
        n = zs.shape[0]
        with torch.enable_grad():
            for _ in range(self.finetune_epochs):
                order = torch.randperm(n, generator=gen).to(zs.device)
                for idx in order.split(self.finetune_batch):
                    loss = F.cross_entropy(head(zs[idx]), support_y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        head.requires_grad_(False)

        def predictor(query_x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return head(self.embed(query_x))

        return predictor

    def config_dict(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "head": self.head_kind, "scale": self.scale,
                "finetune_epochs": self.finetune_epochs, "finetune_lr": self.finetune_lr,
                "finetune_batch": self.finetune_batch, "seed": self.seed, "input_shape": self.input_shape}
