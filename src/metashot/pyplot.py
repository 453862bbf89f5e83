"""matplotlib's pyplot for the plotting modules (learning curves, meta-RL returns): an optional dependency,
drawn into files only."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (never needs a display); an ImportError that says how to
    install it when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "metashot plot needs matplotlib, an optional dependency: "
            "pip install 'metashot[plot]' (or pip install matplotlib)"
        ) from e
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt
