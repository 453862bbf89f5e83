"""Backbones and functional helpers."""

from metashot.nn import forksafe as _forksafe  # noqa: F401  (forked children: 1 thread)
from metashot.nn.backbones import available_backbones, build_backbone

__all__ = ["build_backbone", "available_backbones"]
