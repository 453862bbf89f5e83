"""Warnings on the command line as one clean line each: ``metashot predict: warning: ...``, without the
file name, line number and source line that Python's default format adds."""

from __future__ import annotations

import contextlib
import sys
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
    """Within the block, every warning shown is printed to stderr by :func:`warning_line`; the filters
    (which warnings show, and how often) are Python's own, restored on exit."""
    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        print(warning_line(prefix, message, category), file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
