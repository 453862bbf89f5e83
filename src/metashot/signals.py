"""Swapping the SIGINT/SIGTERM handlers for the length of a block, in one place.

Two uses: a checkpoint write holds the signals back until its renames are done
(:func:`deferred_signals`), and a training loop records them to stop after its step
(:meth:`metashot.runs.RunDir.stop_signals`). Off the main thread nothing is installed (Python allows handlers
there only), nor where a handler was installed outside Python (it could not be put back).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def handling(handler: Callable[[int, Any], None]) -> Iterator[bool]:
    """Inside the block, SIGINT/SIGTERM call ``handler(signum, frame)``; the handlers of before come back at
    the end. Yields whether the handler was installed."""
    main = threading.current_thread() is threading.main_thread()
    if not main or None in map(signal.getsignal, STOP_SIGNALS):
        yield False
        return
    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield True
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the duration of the block, then deliver them to the handlers that were
    installed before (in the order they came): a checkpoint write is never cut between its renames."""
    received: list[int] = []
    try:
        with handling(lambda signum, frame: received.append(signum)):
            yield
    finally:
        for s in received:
            signal.raise_signal(s)
