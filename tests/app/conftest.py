"""Real photos for the page's tests: Flowers-102 JPEGs extracted from the shared data into a temp folder."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def extract_flowers(data_root: Path, dest: Path, classes: int, per: int) -> dict[str, list[Path]]:
    """The first ``per`` photos of the first ``classes`` Flowers-102 classes (by name), as
    ``dest/<class>/<class>_<i>.jpg`` (file names unique across classes: a thumbnail names its photo)."""
    archive = data_root / "flowers102" / "flowers102_odd.zip"
    if not archive.is_file():
        pytest.fail(f"test data missing: {archive}. Set METASHOT_DATA to the shared data folder",
                    pytrace=False)
    by: dict[str, list[str]] = {}
    with zipfile.ZipFile(archive) as z:
        for n in sorted(z.namelist()):
            parts = n.split("/")
            if len(parts) == 3 and parts[2].endswith(".jpg"):
                by.setdefault(parts[1][4:], []).append(n)
        out: dict[str, list[Path]] = {}
        for c in sorted(by)[:classes]:
            (dest / c).mkdir(parents=True, exist_ok=True)
            out[c] = []
            for i, n in enumerate(by[c][:per]):
                f = dest / c / f"{c}_{i}.jpg"
                f.write_bytes(z.read(n))
                out[c].append(f)
    return out


@pytest.fixture(scope="session")
def flowers(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """4 classes x 8 photos: alpine_sea_holly, artichoke, ball_moss, balloon_flower."""
    return extract_flowers(data_root, tmp_path_factory.mktemp("flowers"), classes=4, per=8)


@pytest.fixture(scope="session")
def app_url() -> Iterator[str]:
    """A running page (``metashot app``) on a free local port; photos of at most 5 MB."""
    import socket

    from metashot.app.page import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(port=port, block=False, max_photo_mb=5)
    yield demo.local_url
    demo.close()
