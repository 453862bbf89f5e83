"""Downloads with checksum verification, written atomically: a file is either complete and verified or absent."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm


class DownloadError(RuntimeError):
    """A download failed (network, truncated transfer or checksum mismatch); nothing was left at the target."""


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str | None, timeout: float = 60.0, progress: bool = True) -> Path:
    """Fetch ``url`` into ``dest``, verify its md5, and move it into place atomically.

    The bytes go to a temporary file beside ``dest``; only when the transfer is complete (the byte count
    matches Content-Length when the server sends one) and the md5 matches is it renamed to ``dest``. On any
    failure the temporary file is removed and :class:`DownloadError` names the URL and what was wrong.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5()
        received = 0
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
                total = resp.headers.get("Content-Length")
                total = int(total) if total is not None else None
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                           disable=not progress, leave=False)
                while block := resp.read(1 << 16):
                    out.write(block)
                    h.update(block)
                    received += len(block)
                    bar.update(len(block))
                bar.close()
        except (urllib.error.URLError, OSError, ValueError) as e:
            # http.client.IncompleteRead is a ValueError subclass? No: it is HTTPException; caught below.
            raise DownloadError(f"download of {url} failed after {received} bytes: {e}") from e
        except Exception as e:  # http.client.IncompleteRead and friends
            raise DownloadError(f"download of {url} failed after {received} bytes: {e!r}") from e
        if total is not None and received != total:
            raise DownloadError(f"download of {url} truncated: got {received} of {total} bytes")
        digest = h.hexdigest()
        if md5 is not None and digest != md5:
            raise DownloadError(f"download of {url}: md5 {digest} does not match the expected {md5}; "
                                f"the file was discarded")
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)
