"""CPU rehearsal of what differs on the GPU machine (issue 20): fork after threads, concurrent store builds.

Each check runs in a subprocess with a timeout, so a regression fails here instead of hanging CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")]

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str, tmp_path: Path, timeout: float = 60) -> str:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               METASHOT_CACHE=str(tmp_path / "cache"), METASHOT_QUIET="1")
    try:
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hang: no result within {timeout} s\n{e.stdout}\n{e.stderr}")
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


_WARM = """
    import faulthandler, os, sys
    import torch
    import metashot  # registers the fork handler
    torch.set_num_threads(2)
    a = torch.randn(256, 256)
    for _ in range(3):
        a @ a  # starts the OpenMP intra-op pool: a forked child's parallel op then used to wait forever
    (torch.randn(1_000_000) + 1).sum()

    def child_work():
        faulthandler.dump_traceback_later(20, exit=True)  # never leave a hung orphan behind
        b = torch.randn(256, 256)
        (b @ b).sum(); (torch.randn(1_000_000) + 1).sum()
        torch.nn.functional.conv2d(torch.randn(4, 1, 28, 28), torch.randn(8, 1, 3, 3)).sum()
"""


def test_os_fork_after_threads_does_not_hang(tmp_path: Path) -> None:
    out = _run(_WARM + """
    pid = os.fork()
    if pid == 0:
        child_work()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    (a @ a).sum()  # and the parent's pool still works
    print("ok")
    """, tmp_path)
    assert "ok" in out


def test_multiprocessing_fork_after_threads_does_not_hang(tmp_path: Path) -> None:
    out = _run(_WARM + """
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=child_work) for _ in range(2)]
    for p in ps: p.start()
    for p in ps: p.join(30)
    assert [p.exitcode for p in ps] == [0, 0], [p.exitcode for p in ps]
    print("ok")
    """, tmp_path)
    assert "ok" in out


def test_six_concurrent_builds_of_one_store(tmp_path: Path) -> None:
    """Six processes build the same uncached store at once: none crashes, warns or reads a partial file,
    and all see the same store; a later load verifies (and stamps) it without rebuilding."""
    out = _run("""
    import multiprocessing as mp, os, time, warnings
    import numpy as np
    from pathlib import Path
    from metashot.data.store import cached_store

    src = Path("src.bin"); src.write_bytes(b"x")
    def build():
        time.sleep(0.2)  # all six are in build() together
        rng = np.random.default_rng(0)
        return rng.integers(0, 255, (600, 1, 28, 28), dtype=np.uint8), [200, 200, 200], ["a", "b", "c"]

    def worker(barrier, q, mmap):
        os.environ["METASHOT_MMAP"] = mmap
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            barrier.wait(20)
            s = cached_store("t", [src], {"p": 1}, build)
            q.put((int(s.images.long().sum()), s.class_names, [str(x.message) for x in w]))

    ctx = mp.get_context("fork")
    barrier, q = ctx.Barrier(6), ctx.Queue()
    ps = [ctx.Process(target=worker, args=(barrier, q, str(i % 2))) for i in range(6)]
    for p in ps: p.start()
    res = [q.get(timeout=30) for _ in ps]
    for p in ps: p.join(30)
    assert [p.exitcode for p in ps] == [0] * 6, [p.exitcode for p in ps]
    assert len({r[0] for r in res}) == 1 and all(r[1] == ["a", "b", "c"] for r in res), res
    assert all(not r[2] for r in res), [r[2] for r in res]
    files = sorted(p.suffix for p in Path(os.environ["METASHOT_CACHE"]).iterdir())
    assert files == [".json", ".npy"], files  # no temporary file left behind
    def fail(): raise AssertionError("rebuilt a good cache entry")
    assert int(cached_store("t", [src], {"p": 1}, fail).images.long().sum()) == res[0][0]
    print("ok")
    """, tmp_path)
    assert "ok" in out
