"""``metashot app``: a local page (Gradio, the ``app`` extra) to try few-shot classification in a browser.

Photos (add classes by name and drop photos, a zip or a folder; classify dropped photos; a gallery sorted by
confidence; the CSV; save and load a fitted classifier), text intents, and drawings on a sketch pad. Each
browser tab has its own support set. ``pip install 'metashot[app]'``, then ``metashot app``.
"""

from __future__ import annotations

from typing import Any


def launch(host: str = "127.0.0.1", port: int | None = None, device: str = "cpu",
           max_photo_mb: float = 25.0, block: bool = True) -> Any:
    """Start the page (see :func:`metashot.app.page.launch`); a one-line error when Gradio is missing."""
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise ImportError("metashot app needs Gradio: pip install 'metashot[app]'") from e
    from metashot.app.page import launch as _launch

    return _launch(host, port, device, max_photo_mb, block)
