"""Backbones and functional helpers."""

from metashot.nn import threads as _threads  # noqa: F401  (fork handler: forked children get 1 thread)
from metashot.nn.backbones import available_backbones, build_backbone

__all__ = ["build_backbone", "available_backbones"]
