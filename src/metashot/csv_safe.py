"""CSV cells that a spreadsheet shows as text.

A cell starting with = + - @ (or a tab / carriage return) is a formula to Excel, LibreOffice and Sheets,
so a class folder named ``=HYPERLINK(...)`` would run. Such cells get a leading single quote (OWASP's advice
against CSV injection); every other cell is written unchanged.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: object) -> str:
    """``str(cell)``, prefixed with ``'`` when a spreadsheet would read it as a formula."""
    text = str(cell)
    return "'" + text if text.startswith(FORMULA_STARTS) else text
