"""Backbones and functional helpers."""

from metashot.nn.backbones import available_backbones, build_backbone

__all__ = ["build_backbone", "available_backbones"]
