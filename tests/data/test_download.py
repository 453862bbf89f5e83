"""download() and Omniglot's download path, against a real HTTP server on 127.0.0.1.

The server runs in a daemon thread for the duration of one test; every handler is bounded (a stalled
response waits at most a few seconds), so no test can hang.
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from metashot.data import omniglot as om
from metashot.data.download import DownloadError, download, md5sum

PAYLOAD = bytes(range(256)) * 400  # 100 KiB, several read blocks
MAX_BYTES_ENV = "METASHOT_DOWNLOAD_MAX_BYTES"


class _Server:
    """Routes: /ok/<name> the file; /truncated announces more bytes than it sends, then closes; /stall sends
    part of the body and stops; /drip sends one byte every 20 ms (for at most 4 s, then closes); /nolength
    sends the file without a Content-Length; /missing is a 404."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.release = threading.Event()
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.hits.append(self.path)
                kind, _, name = self.path.lstrip("/").partition("/")
                body = outer.files.get(name)
                if body is None or kind not in ("ok", "truncated", "stall", "drip", "nolength"):
                    self.send_error(404, "not here")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                if kind != "nolength":
                    self.send_header("Content-Length", str(len(body) + (1000 if kind == "truncated" else 0)))
                self.end_headers()
                if kind in ("ok", "nolength"):
                    self.wfile.write(body)
                elif kind == "drip":
                    stop = time.monotonic() + 4.0  # bounded: the client gives up long before
                    try:
                        for i in range(len(body)):
                            if outer.release.is_set() or time.monotonic() > stop:
                                break
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(0.02)
                    except OSError:  # the client hung up
                        pass
                    self.close_connection = True
                elif kind == "truncated":
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    outer.release.wait(5.0)  # bounded: the client times out long before

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def url(self, kind: str, name: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{name}"


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # talk to 127.0.0.1 directly
    s = _Server({"payload.bin": PAYLOAD})
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(timeout=5)


def _free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_success_with_md5(server: _Server, tmp_path: Path) -> None:
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    dest = tmp_path / "dl" / "payload.bin"
    assert download(server.url("ok", "payload.bin"), dest, md5, timeout=5, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD and md5sum(dest) == md5
    assert _left(dest.parent) == ["payload.bin"], "no temporary file may remain"


def test_md5_mismatch_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    wrong = hashlib.md5(PAYLOAD + b"x").hexdigest()
    dest = tmp_path / "payload.bin"
    with pytest.raises(DownloadError, match=f"md5 {hashlib.md5(PAYLOAD).hexdigest()} does not match the "
                                            f"expected {wrong}"):
        download(server.url("ok", "payload.bin"), dest, wrong, timeout=5, progress=False)
    assert _left(tmp_path) == []


def test_corrupted_transfer_is_caught_by_md5(server: _Server, tmp_path: Path) -> None:
    """The server sends a complete response whose bytes differ from the published file."""
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    server.files["payload.bin"] = PAYLOAD[:5000] + b"\xff" + PAYLOAD[5001:]
    with pytest.raises(DownloadError, match="does not match"):
        download(server.url("ok", "payload.bin"), tmp_path / "payload.bin", md5, timeout=5, progress=False)
    assert _left(tmp_path) == []


def test_truncated_transfer_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    with pytest.raises(DownloadError) as info:
        download(server.url("truncated", "payload.bin"), tmp_path / "payload.bin", md5, timeout=5,
                 progress=False)
    msg = str(info.value)
    assert "truncated" in msg.lower() or "incomplete" in msg.lower(), msg
    assert str(len(PAYLOAD) + 1000) in msg, "the error should give the announced size"
    assert _left(tmp_path) == []


def test_stalled_server_times_out(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="timed out"):
        download(server.url("stall", "payload.bin"), tmp_path / "payload.bin", None, timeout=0.5,
                 progress=False)
    assert _left(tmp_path) == []


def test_dripping_server_hits_the_deadline(server: _Server, tmp_path: Path) -> None:
    """Every read returns within the per-read timeout, so only an overall deadline stops this."""
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"exceeded its deadline of 1 s after \d+ bytes.*DEADLINE"):
        download(server.url("drip", "payload.bin"), tmp_path / "payload.bin", None, timeout=5, progress=False,
                 deadline=1.0)
    assert time.monotonic() - t0 < 2.5
    assert _left(tmp_path) == []


def test_size_cap(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "payload.bin"
    with pytest.raises(DownloadError, match=f"announces {len(PAYLOAD)} bytes, more than the cap of 1000"):
        download(server.url("ok", "payload.bin"), dest, None, timeout=5, progress=False, max_bytes=1000)
    monkeypatch.setenv(MAX_BYTES_ENV, "70000")  # no Content-Length: the bytes received are counted
    with pytest.raises(DownloadError, match="more than 70000 bytes received, the size cap"):
        download(server.url("nolength", "payload.bin"), dest, None, timeout=5, progress=False)
    assert _left(tmp_path) == []
    monkeypatch.setenv(MAX_BYTES_ENV, str(len(PAYLOAD)))  # exactly the size is allowed
    download(server.url("nolength", "payload.bin"), dest, None, timeout=5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_BYTES_ENV}='lots' is not a number"):
        download(server.url("ok", "payload.bin"), dest, None, timeout=5, progress=False)


def test_downloaded_file_is_readable_by_all(server: _Server, tmp_path: Path) -> None:
    dest = download(server.url("ok", "payload.bin"), tmp_path / "p.bin", None, timeout=5, progress=False)
    assert dest.stat().st_mode & 0o777 == 0o644


def test_http_error_and_refused_connection(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404 not here"):
        download(server.url("missing", "payload.bin"), tmp_path / "x.bin", None, timeout=5, progress=False)
    url = f"http://127.0.0.1:{_free_port()}/payload.bin"
    with pytest.raises(DownloadError, match=r"download of .*payload.bin failed after 0 bytes: .*refused"):
        download(url, tmp_path / "x.bin", None, timeout=5, progress=False)
    assert _left(tmp_path) == []


def _fake_part(part: str) -> bytes:
    """A tiny zip in the official layout: part/<Alphabet>/<characterNN>/<id>_<drawer>.png."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for a, alpha in enumerate(("Alpha", "Beta")):
            for c in (1, 2, 3):
                for d in (1, 2):
                    im = Image.new("1", (105, 105), 1)
                    im.paste(0, (10 * c, 10 * d, 10 * c + 20 + a, 10 * d + 30))
                    png = io.BytesIO()
                    im.save(png, format="PNG")
                    zf.writestr(f"{part}/{alpha}/character{c:02d}/{c:04d}_{d:02d}.png", png.getvalue())
    return buf.getvalue()


def test_omniglot_downloads_missing_zip(server: _Server, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    part = "images_background_small1"
    data = _fake_part(part)
    server.files[f"{part}.zip"] = data
    monkeypatch.setenv(om.BASE_URL_ENV, f"http://127.0.0.1:{server.port}/ok/")
    monkeypatch.setitem(om.OFFICIAL_MD5, part, hashlib.md5(data).hexdigest())
    store = om.omniglot("background_small1", tmp_path, cache_dir=tmp_path / "cache")
    assert server.hits == [f"/ok/{part}.zip"]
    assert store.class_names == [f"{a}/character{c:02d}" for a in ("Alpha", "Beta") for c in (1, 2, 3)]
    assert store.counts.tolist() == [2] * 6 and tuple(store.images.shape) == (12, 1, 28, 28)
    assert (tmp_path / "omniglot" / f"{part}.zip").read_bytes() == data
    assert _left(tmp_path / "omniglot") == [f"{part}.zip"]
    om.omniglot("background_small1", tmp_path, cache_dir=tmp_path / "cache")
    assert len(server.hits) == 1, "a file that is present is never downloaded again"


def test_omniglot_download_with_wrong_checksum(server: _Server, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    part = "images_background"
    server.files[f"{part}.zip"] = _fake_part(part)  # its md5 is not the official one
    with pytest.raises(FileNotFoundError) as info:
        om.locate(part, tmp_path, url=f"http://127.0.0.1:{server.port}/ok", timeout=5)
    msg = str(info.value)
    assert f"{part}.zip" in msg and str(tmp_path / "omniglot") in msg
    assert om.OFFICIAL_MD5[part] in msg, "the error should show the expected (official) md5"
    assert _left(tmp_path / "omniglot") == []


def test_offline_error_names_files_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(om.BASE_URL_ENV, f"http://127.0.0.1:{_free_port()}/")
    folder = tmp_path / "omniglot"
    with pytest.raises(FileNotFoundError) as info:
        om.omniglot("test", tmp_path, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "could not be downloaded" in msg
    assert f"needs images_background.zip and images_evaluation.zip in {folder}" in msg
    with pytest.raises(FileNotFoundError) as info:
        om.omniglot("evaluation", tmp_path, download_missing=False, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "images_evaluation.zip" in msg and str(folder) in msg and "METASHOT_DATA" in msg
    assert _left(folder) == []


def test_user_files_need_no_checksum_but_a_structure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local zip with a non-official md5 (like the re-packed shared copies) is accepted if its layout is
    right."""
    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("a local file must not trigger a download")

    monkeypatch.setattr(om, "download", no_network)
    folder = tmp_path / "omniglot"
    folder.mkdir()
    (folder / "images_background_small2.zip").write_bytes(_fake_part("images_background_small2"))
    s = om.omniglot("background_small2", tmp_path, cache_dir=tmp_path / "cache")
    assert s.num_classes == 6
    with zipfile.ZipFile(folder / "images_evaluation.zip", "w") as zf:
        zf.writestr("readme.txt", "no images here")
    with pytest.raises(ValueError, match="holds no images in the official layout"):
        om.omniglot("evaluation", tmp_path, cache_dir=tmp_path / "cache")
