"""Downloads with checksum verification, written atomically: a file is complete and verified, or absent."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm


class DownloadError(RuntimeError):
    """A download failed (network, truncated transfer or checksum mismatch); nothing was left behind."""


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest (``hashlib`` algorithm name) of the file at ``path``, read in ``chunk``-byte blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5sum(path: Path) -> str:
    """Hex md5 of the file at ``path`` (what the official Omniglot checksums use)."""
    return file_digest(path, "md5")


def download(url: str, dest: Path, md5: str | None, timeout: float = 60.0, progress: bool = True) -> Path:
    """Fetch ``url`` into ``dest``, verify its md5, and move it into place atomically.

    The bytes go to a hidden temporary file beside ``dest`` (``.<name>.XXXX.part``); only when the transfer is
    complete (the byte count matches Content-Length when the server sends one) and the md5 matches is it
    renamed to ``dest``. On any failure, including an interrupt, the temporary file is removed and
    :class:`DownloadError` names the URL and what was wrong. ``timeout`` bounds every network wait (connect
    and each read), so a stalled server is an error, not a hang.

    Args:
        url: http(s) or file URL.
        dest: final path; its folder is created if needed.
        md5: expected hex digest, or None to skip the check (only for files without a published checksum).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    received = 0
    total: int | None = None
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length is not None and length.isdigit() else None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                              disable=not progress, leave=False) as bar:
                        while block := resp.read(1 << 16):
                            out.write(block)
                            received += len(block)
                            bar.update(len(block))
            except urllib.error.HTTPError as e:
                raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
            except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                # URLError covers refused connections and DNS failures; HTTPException covers IncompleteRead
                # (connection closed mid-body); TimeoutError covers a stalled server.
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                raise DownloadError(f"download of {url} failed after {received} bytes: {reason!r}") from e
        if total is not None and received != total:
            raise DownloadError(f"download of {url} truncated: got {received} of {total} bytes; "
                                f"nothing was written to {dest}")
        digest = md5sum(tmp)  # hash what is on disk, not only what was received
        if md5 is not None and digest != md5:
            raise DownloadError(f"download of {url}: md5 {digest} does not match the expected {md5}; "
                                f"the file was discarded, nothing was written to {dest}")
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)
