"""The bundled-model catalogue: checkpoints shipped inside the package (``metashot/weights/<name>``).

A bundled model is opened by its name wherever a checkpoint path is accepted (``metashot.load("photos")``,
``metashot eval protonet-omniglot``); :func:`metashot.checkpoint.resolve` looks names up here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CHECKPOINT_CONFIG = "config.json"  # (the file that marks a checkpoint folder; metashot.checkpoint.CONFIG)


def bundled_path(name: str) -> Path | None:
    """Folder of a checkpoint shipped inside the package (``metashot/weights/<name>``), if any."""
    p = Path(str(resources.files("metashot").joinpath("weights", name)))
    return p if (p / CHECKPOINT_CONFIG).is_file() else None


def bundled_names() -> list[str]:
    """The names of the bundled checkpoints, sorted."""
    root = Path(str(resources.files("metashot").joinpath("weights")))
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CHECKPOINT_CONFIG).is_file())
