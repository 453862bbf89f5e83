"""Backbones and functional helpers."""

from metashot.nn.backbones import build_backbone, available_backbones

__all__ = ["build_backbone", "available_backbones"]
