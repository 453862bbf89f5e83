"""A device this machine does not have is one line naming the setting and the fix (torch itself raises an
AssertionError or a multi-line RuntimeError for CUDA on a CPU-only machine, and only when a tensor moves)."""

from __future__ import annotations

from typing import Any


def check_device(device: Any, where: str, fix: str = "use cpu") -> None:
    """Raise ValueError(one line) when ``device`` names no device usable here; None passes."""
    if device is None or device == "cpu":  # always usable; and a torch-free command stays torch-free
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{where}: {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{where}: device {device!r}, but CUDA is not available here (this PyTorch build "
                         f"has no CUDA support, or no GPU is visible); {fix}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{where}: device {device!r}, but {torch.cuda.device_count()} GPU(s) are visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where}: device {device!r}, but Apple's MPS is not available here; {fix}")
