"""Issue 30: small changes of behaviour that came with the refactor, each pinned here."""

from __future__ import annotations

import io
import signal

import pytest


def test_write_rows_makes_every_cell_safe_once() -> None:
    from metashot.csv_safe import spreadsheet_safe, write_rows

    out = io.StringIO()
    write_rows(out, [["=a", spreadsheet_safe("=b"), "-c", 0.5]], ["file", "label", "flag", "confidence"])
    assert out.getvalue().splitlines() == ["file,label,flag,confidence", "'=a,'=b,'-c,0.5"]


def test_signal_swaps_leave_handlers_installed_outside_python_alone(monkeypatch, tmp_path) -> None:
    from metashot.runs import RunDir

    installed = []
    monkeypatch.setattr(signal, "getsignal", lambda s: None)  # (what Python reports for such a handler)
    monkeypatch.setattr(signal, "signal", lambda s, h: installed.append(s))
    with RunDir(tmp_path).stop_signals():
        pass
    assert installed == []


def test_load_fitted_needs_the_model_or_how_to_load_it(monkeypatch, tmp_path) -> None:
    import metashot.fitted as fitted

    monkeypatch.setattr(fitted, "read_description", lambda p: {"model": {"name": "x"}})
    with pytest.raises(ValueError, match="give the loaded model"):
        fitted.load_fitted(tmp_path)
