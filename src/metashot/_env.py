"""Where metashot looks for data and caches (environment variables, with user defaults)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """Root folder of datasets: ``$METASHOT_DATA``, else ``~/.cache/metashot/data`` (downloads land there)."""
    env = os.environ.get("METASHOT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metashot" / "data"


def cache_root() -> Path:
    """Folder of decoded-image stores: ``$METASHOT_CACHE``, else ``~/.cache/metashot/stores``."""
    env = os.environ.get("METASHOT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metashot" / "stores"


def quiet() -> bool:
    """True when ``$METASHOT_QUIET`` is set (``metashot ... --quiet`` sets it): no progress bars anywhere,
    including the one-off decoding of a dataset into its store and the text encoder's loading bars."""
    return os.environ.get("METASHOT_QUIET", "").strip().lower() not in ("", "0", "false", "no")
