"""`metashot app` in a real browser: headless Debian Chromium driven by Playwright for Python.

Two classes of three photos each, four query photos, the labels in the gallery, the CSV download, one bad
upload (an error line, and the page keeps working), and two tabs with different classes. A screenshot is
saved (a small copy also to $METASHOT_SCREENSHOT_DIR when set: docs/figures/app_photos.png was made by
``METASHOT_SCREENSHOT_DIR=docs/figures .venv/bin/python -m pytest tests/app/test_app_browser.py``).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 180_000  # the first "add" loads the photo model in the app's process


def chromium() -> str:
    """Debian's Chromium (Playwright's own browser download is not reachable here); .ci/run installs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("headless Chromium is missing: apt-get install -y chromium (.ci/run does this)",
                    pytrace=False)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield b
        b.close()


def status(page) -> str:
    return page.inner_text("#status")


def wait_status(page, text: str) -> str:
    """Wait until the status line contains ``text``; return it."""
    page.wait_for_function("t => document.querySelector('#status').innerText.includes(t)", arg=text,
                           timeout=TIMEOUT_MS)
    return status(page)


def drop(page, target: str, files: list[Path]) -> None:
    """Drop files on a file component and wait until the last one is uploaded (its name is listed)."""
    page.set_input_files(f"{target} input[type=file]", [str(f) for f in files])
    page.locator(f'{target} td.filename[aria-label="{files[-1].name}"]').wait_for(timeout=TIMEOUT_MS)


def add_class(page, name: str, files: list[Path]) -> None:
    page.fill("#class-name textarea", name)
    drop(page, "#class-photos", files)
    page.click("#add-class")
    wait_status(page, f"Added {len(files)} to '{name}'")


def classes_shown(page, n: int) -> list[list[str]]:
    """The classes table's rows ``[class, photos]`` once it shows ``n`` rows (Gradio 6 draws a Dataframe's
    rows as ``div.virtual-row`` of ``[role=gridcell]``)."""
    page.wait_for_function("n => document.querySelectorAll('#classes .virtual-row').length === n", arg=n,
                           timeout=TIMEOUT_MS)
    js = "rs => rs.map(r => Array.from(r.querySelectorAll('[role=gridcell]'), c => c.innerText.trim()))"
    return page.eval_on_selector_all("#classes .virtual-row", js)


def gallery(page, n: int) -> list[tuple[str, str, float, str]]:
    """(file, label, confidence, mark) of each thumbnail, in the order shown."""
    page.wait_for_function("n => document.querySelectorAll('#gallery .caption-label').length === n", arg=n,
                           timeout=TIMEOUT_MS)
    js = "bs => bs.map(b => [b.querySelector('img').src, b.querySelector('.caption-label').innerText])"
    items = page.eval_on_selector_all("#gallery .thumbnail-item", js)
    out = []
    for src, caption in items:
        m = re.fullmatch(r"(.+) · (\d+)%(?: · (.+))?", caption.strip())
        assert m, caption
        out.append((src.rsplit("/", 1)[-1], m.group(1), float(m.group(2)) / 100, m.group(3) or ""))
    return out


def test_photos_flow_in_a_real_browser(browser, app_url, flowers, tmp_path):
    names = list(flowers)
    a, b = names[0], names[1]
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(app_url)
    page.wait_for_selector("#add-class", timeout=TIMEOUT_MS)

    add_class(page, a, flowers[a][:3])
    add_class(page, b, flowers[b][:3])
    assert classes_shown(page, 2) == [[a, "3"], [b, "3"]]

    notes = tmp_path / "notes.txt"  # one bad upload: a one-line error, nothing added, the page keeps working
    notes.write_text("not a photo")
    page.fill("#class-name textarea", "oops")
    drop(page, "#class-photos", [notes])
    page.click("#add-class")
    said = wait_status(page, "not an image")
    assert said.startswith("⚠ notes.txt is not an image") and "\n" not in said and "Traceback" not in said
    assert classes_shown(page, 2) == [[a, "3"], [b, "3"]]

    queries = flowers[a][3:5] + flowers[b][3:5]
    drop(page, "#query-photos", queries)
    page.click("#classify")
    wait_status(page, "Classified 4 photos into 2 classes")
    shown = gallery(page, 4)
    assert sorted(f for f, *_ in shown) == sorted(q.name for q in queries)
    for file, label, _, _ in shown:  # the file names start with their true class
        assert file.startswith(label + "_"), (file, label)
    confidences = [c for _, _, c, _ in shown]
    assert confidences == sorted(confidences, reverse=True)

    with page.expect_download(timeout=TIMEOUT_MS) as dl:
        page.click("#csv a")
    with open(dl.value.path(), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["label"]) for r in rows] == [(f, lab) for f, lab, _, _ in shown]
    assert all(abs(float(r["confidence"]) - c) <= 0.005 for r, (_, _, c, _) in zip(rows, shown, strict=True))

    shot = tmp_path / "app_photos.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("METASHOT_SCREENSHOT_DIR"):  # a small copy for the README: 900 px wide, 64 colours
        from PIL import Image

        with Image.open(shot) as im:
            small = im.convert("RGB").resize((900, round(im.height * 900 / im.width)), Image.LANCZOS)
        small.quantize(64).save(Path(os.environ["METASHOT_SCREENSHOT_DIR"]) / shot.name, optimize=True)

    # A second tab has its own classes: it never sees the first tab's, nor the first tab its.
    other = browser.new_page(viewport={"width": 1280, "height": 1000})
    other.goto(app_url)
    other.wait_for_selector("#add-class", timeout=TIMEOUT_MS)
    c, d = names[2], names[3]
    assert classes_shown(other, 0) == []
    add_class(other, c, flowers[c][:2])
    add_class(other, d, flowers[d][:2])
    assert classes_shown(other, 2) == [[c, "2"], [d, "2"]]
    drop(other, "#query-photos", [flowers[c][6], flowers[d][6]])
    other.click("#classify")
    wait_status(other, "Classified 2 photos into 2 classes")
    assert {lab for _, lab, _, _ in gallery(other, 2)} <= {c, d}
    page.reload()  # the first tab's classes are still its own (the table is refreshed by the next add)
    page.wait_for_selector("#add-class", timeout=TIMEOUT_MS)
    assert classes_shown(page, 0) == []  # a reload is a new session: a fresh support set
    other.close()
    page.close()
