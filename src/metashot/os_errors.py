"""Operating-system errors as one line: the path, what went wrong, and what to do about it."""

from __future__ import annotations

import errno

_DENIED = "check its permissions (or those of its folder), or use another path"
FIXES: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", _DENIED),
    errno.EPERM: ("operation not permitted (permission)", _DENIED),
    errno.EROFS: ("it is on a read-only file system", "use a path on a writable disk"),
    errno.ENOSPC: ("the disk is full", "free some space or write elsewhere; files written before are intact"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or write elsewhere"),
    errno.EISDIR: ("it is a folder", "give the path of a file"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "use another path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EEXIST: ("it already exists", "remove it or use another path"),
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or close other programs"),
    errno.EIO: ("input/output error (a failing disk or network file system)", "check the disk"),
}


def os_error_line(e: OSError) -> str:
    """``PATH: what went wrong; what to do`` for an error the operating system raised about a file; the
    plain message for OSErrors metashot raised itself (they carry no errno and already say all that)."""
    if e.errno is None:
        return str(e)
    what, fix = FIXES.get(e.errno, (e.strerror or "error", "check the path"))
    where = e.filename if e.filename is not None else "a file"
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    return f"{where}: {what} ({e.strerror}); {fix}"
