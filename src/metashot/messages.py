"""Warnings on the command line as one clean line each: ``metashot predict: warning: ...``, without the
file name, line number and source line that Python's default format adds."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any


def warning_line(prefix: str, message: Any, category: type[Warning]) -> str:
    """``prefix: warning: message`` on one line (the category is named unless it is a UserWarning)."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"{prefix}: warning{kind}: {text}"


@contextlib.contextmanager
def one_line_warnings(prefix: str) -> Iterator[None]:
    """Within the block, every warning Python prints is formatted by :func:`warning_line`. Only the format
    changes: which warnings show (the filters), where they go, and recorders such as
    ``warnings.catch_warnings(record=True)`` are untouched."""
    def fmt(message: Any, category: type[Warning], filename: str, lineno: int,
            line: str | None = None) -> str:
        return warning_line(prefix, message, category) + "\n"

    before = warnings.formatwarning
    warnings.formatwarning = fmt
    try:
        yield
    finally:
        warnings.formatwarning = before
