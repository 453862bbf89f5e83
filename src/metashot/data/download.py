"""Downloads with checksum verification, written atomically: a file is complete and verified, or absent."""

from __future__ import annotations

import http.client
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from metashot._env import quiet
from metashot.digest import file_digest  # noqa: F401 (re-exported: its old home)

DEADLINE_ENV = "METASHOT_DOWNLOAD_DEADLINE"
MAX_BYTES_ENV = "METASHOT_DOWNLOAD_MAX_BYTES"
# Omniglot's largest zip (images_background.zip) is 9.5 MB: 15 minutes allow ~11 KB/s, 64 MiB is 7x its size.
DEFAULT_DEADLINE_S = 900.0
DEFAULT_MAX_BYTES = 64 << 20


class DownloadError(RuntimeError):
    """A download failed (network, truncated transfer, deadline, size cap or checksum mismatch); nothing was
    left behind."""


def _setting(name: str, value: float | None, env: str, default: float) -> float:
    """``value`` if given, else the environment variable ``env``, else ``default``; must be positive."""
    if value is None:
        raw = os.environ.get(env)
        if raw is None or not raw.strip():
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{env}={raw!r} is not a number; unset it or give a positive number") from None
    if not value > 0:
        raise ValueError(f"download: {name} must be positive, got {value}"
                         f" (argument or {env})")
    return value


def md5sum(path: Path) -> str:
    """Hex md5 of the file at ``path`` (what the official Omniglot checksums use)."""
    return file_digest(path, "md5")


class _Deadline:
    """Shuts down every socket a request opens once the deadline passes, so nothing can hold a request past
    it: not a server that drips its status line or headers (which ``urlopen`` reads before returning, each
    read bounded only by the per-read timeout), nor one that drips its body, nor a chain of redirects."""

    def __init__(self, seconds: float) -> None:
        self.socks: list[socket.socket] = []
        self.expired = False
        self.lock = threading.Lock()
        self.timer = threading.Timer(seconds, self.fire)
        self.timer.daemon = True

    def watch(self, sock: socket.socket) -> socket.socket:
        with self.lock:
            self.socks.append(sock)
            if self.expired:
                self._shut(sock)
        return sock

    def fire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.socks:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # a read blocked in another thread returns at once
        except OSError:
            pass  # already closed

    def opener(self) -> urllib.request.OpenerDirector:
        """An opener whose HTTP(S) connections register their sockets here (before any TLS wrapping)."""
        deadline = self

        def connection(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
            class Watched(base):  # type: ignore[valid-type, misc]
                def __init__(self, *args: object, **kwargs: object) -> None:
                    super().__init__(*args, **kwargs)  # type: ignore[arg-type]
                    create = self._create_connection  # type: ignore[attr-defined]
                    self._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))

            return Watched

        http_conn = connection(http.client.HTTPConnection)
        https_conn = connection(http.client.HTTPSConnection)

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(http_conn, req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(https_conn, req, context=self._context)  # type: ignore[attr-defined]

        return urllib.request.build_opener(HTTP, HTTPS)


def download(url: str, dest: Path, md5: str | None, timeout: float = 60.0, progress: bool = True,
             deadline: float | None = None, max_bytes: int | None = None) -> Path:
    """Fetch ``url`` into ``dest``, verify its md5, and move it into place atomically.

    The bytes go to a hidden temporary file beside ``dest`` (``.<name>.XXXX.part``); only when the transfer is
    complete (the byte count matches Content-Length when the server sends one) and the md5 matches is it
    renamed to ``dest``. On any failure, including an interrupt, the temporary file is removed and
    :class:`DownloadError` names the URL and what was wrong. ``timeout`` bounds every network wait (connect
    and each read), so a stalled server is an error, not a hang; ``deadline`` bounds the whole request
    (status line, headers, redirects and body: :class:`_Deadline`), so a server that drips a byte at a time
    is an error too, and ``max_bytes`` caps the size (checked against
    Content-Length before reading, and against the bytes received). The file is made readable by all (0644).

    Args:
        url: http(s) or file URL.
        dest: final path; its folder is created if needed.
        md5: expected hex digest, or None to skip the check (only for files without a published checksum).
        deadline: seconds for the whole download; default ``$METASHOT_DOWNLOAD_DEADLINE`` or 900.
        max_bytes: largest accepted size; default ``$METASHOT_DOWNLOAD_MAX_BYTES`` or 64 MiB.
    """
    deadline = _setting("deadline", deadline, DEADLINE_ENV, DEFAULT_DEADLINE_S)
    max_bytes = int(_setting("max_bytes", max_bytes, MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
    hint = f"pass a larger deadline= / max_bytes= or set {DEADLINE_ENV} / {MAX_BYTES_ENV}"
    end = time.monotonic() + deadline
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    received = 0
    total: int | None = None
    watchdog = _Deadline(deadline)
    watchdog.timer.start()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with watchdog.opener().open(url, timeout=min(timeout, deadline)) as resp:
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length is not None and length.isdigit() else None
                    if total is not None and total > max_bytes:
                        raise DownloadError(f"download of {url} refused: the server announces {total} bytes, "
                                            f"more than the cap of {max_bytes}; {hint}")
                    sock = getattr(getattr(resp.fp, "raw", None), "_sock", None)  # to shorten the last wait
                    with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                              disable=not progress or quiet(), leave=False) as bar:
                        while True:
                            left = end - time.monotonic()
                            if left <= 0:
                                raise DownloadError(f"download of {url} exceeded its deadline of "
                                                    f"{deadline:g} s after {received} bytes; {hint}")
                            if hasattr(sock, "settimeout"):
                                sock.settimeout(min(timeout, left))
                            # read1: one network read, so a dripping server cannot hold a 64 KiB read forever
                            block = resp.read1(min(1 << 16, max_bytes + 1 - received))
                            if not block:
                                if watchdog.expired:  # the end came from the deadline, not the server
                                    raise DownloadError(f"download of {url} exceeded its deadline of "
                                                        f"{deadline:g} s after {received} bytes; {hint}")
                                break
                            out.write(block)
                            received += len(block)
                            bar.update(len(block))
                            if received > max_bytes:
                                raise DownloadError(f"download of {url} stopped: more than {max_bytes} bytes "
                                                    f"received, the size cap; {hint}")
            except urllib.error.HTTPError as e:
                raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
            except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                # URLError covers refused connections and DNS failures; HTTPException covers IncompleteRead
                # (connection closed mid-body); TimeoutError covers a stalled server.
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                if watchdog.expired or time.monotonic() >= end:
                    raise DownloadError(f"download of {url} exceeded its deadline of {deadline:g} s after "
                                        f"{received} bytes ({reason!r}); {hint}") from e
                raise DownloadError(f"download of {url} failed after {received} bytes: {reason!r}") from e
        if total is not None and received != total:
            raise DownloadError(f"download of {url} truncated: got {received} of {total} bytes; "
                                f"nothing was written to {dest}")
        digest = md5sum(tmp)  # hash what is on disk, not only what was received
        if md5 is not None and digest != md5:
            raise DownloadError(f"download of {url}: md5 {digest} does not match the expected {md5}; "
                                f"the file was discarded, nothing was written to {dest}")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a data folder may be shared between users
        os.replace(tmp, dest)
        return dest
    finally:
        watchdog.timer.cancel()
        tmp.unlink(missing_ok=True)
