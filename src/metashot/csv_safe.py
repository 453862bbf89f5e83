"""CSV cells that a spreadsheet shows as text, and the one writer of metashot's CSV files (predictions of
images and sentences, from the CLI and the page).

A cell starting with = + - @ (or a tab / carriage return) is a formula to Excel, LibreOffice and Sheets,
so a class folder named ``=HYPERLINK(...)`` would run. Such cells get a leading single quote (OWASP's advice
against CSV injection); every other cell is written unchanged.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from typing import TextIO

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: object) -> str:
    """``str(cell)``, prefixed with ``'`` when a spreadsheet would read it as a formula."""
    text = str(cell)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def write_rows(out: TextIO, rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> None:
    """Write ``header`` (if given) and ``rows`` to ``out`` as CSV, every cell :func:`spreadsheet_safe` (which
    leaves a cell it already made safe unchanged)."""
    w = csv.writer(out)
    if header is not None:
        w.writerow(header)
    w.writerows([spreadsheet_safe(c) for c in r] for r in rows)
