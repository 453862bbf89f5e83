"""The README's gradio_client example, run against a running page (``metashot app``)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The README's Python block that calls ``Client(...)``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if "gradio_client" in b and "Client(" in b]
    assert len(found) == 1, "README: expected one gradio_client example"
    return found[0]


def test_readme_gradio_client_example_runs(app_url, flowers, tmp_path, monkeypatch, capsys):
    a, b = list(flowers)[:2]
    with zipfile.ZipFile(tmp_path / "support.zip", "w") as z:  # the README's file names, two flower classes
        for c in (a, b):
            for p in flowers[c][:3]:
                z.write(p, f"{c}/{p.name}")
    (tmp_path / "q1.jpg").write_bytes(flowers[a][5].read_bytes())
    (tmp_path / "q2.jpg").write_bytes(flowers[b][5].read_bytes())
    code = readme_example()
    assert 'Client("http://127.0.0.1:7860/")' in code
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code.replace("http://127.0.0.1:7860/", app_url), "README example", "exec"), scope)
    rows = scope["rows"]
    assert sorted((r["file"], r["label"]) for r in rows) == [("q1.jpg", a), ("q2.jpg", b)]
    assert [r["confidence"] for r in rows] == sorted((r["confidence"] for r in rows), reverse=True)
    lines = Path(scope["csv_path"]).read_text().splitlines()
    assert lines[0] == "file,label,confidence,flag" and len(lines) == 3
    assert [row[1] for row in scope["intents"]] == ["greet", "bye"]


def test_api_mistake_is_one_line(app_url, flowers):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False)
    with pytest.raises(AppError) as e:
        client.predict("photos", None, [handle_file(str(flowers[list(flowers)[0]][0]))], False,
                       api_name="/classify_photos")
    assert str(e.value) == "give support_zip: a zip of class subfolders of photos"
