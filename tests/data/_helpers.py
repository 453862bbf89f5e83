"""Helpers shared by the data tests, and one child process that both the cache-timing and the cross-process
determinism tests read (a second Python process costs a torch import, so the suite starts only one)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metashot.data.episodes import EpisodeBatch, EpisodeSampler
from metashot.data.store import ClassStore

CHILD_SIZES = [20] * 50 + [7, 9, 13]
CHILD_ARGS = {"ways": 5, "shots": 2, "queries": 3, "seed": 2024, "tasks_per_batch": 6}
CHILD_BATCHES = (0, 3, 99)


def tagged_store(counts: list[int]) -> ClassStore:
    """A store whose item at row r is the int64 vector [class, index within class, r]: every gathered item
    says where it came from, so episode structure can be checked exactly."""
    rows = []
    for c, n in enumerate(counts):
        for i in range(n):
            rows.append([c, i, len(rows)])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    names = [f"class{c:03d}" for c in range(len(counts))]
    return ClassStore(torch.tensor(rows, dtype=torch.int64), offsets, names, {"name": "tagged"})


def digest(batch: EpisodeBatch) -> str:
    """sha256 of every tensor of a batch."""
    h = hashlib.sha256()
    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.classes):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def child_digests() -> list[str]:
    s = EpisodeSampler(tagged_store(CHILD_SIZES), **CHILD_ARGS)
    return [digest(s.sample(i)) for i in CHILD_BATCHES]


_CHILD = """
import json, sys, time
import torch
torch.set_num_threads(1)
t0 = time.perf_counter()
from metashot.data.omniglot import omniglot
t1 = time.perf_counter()
store = omniglot("train")
t2 = time.perf_counter()
sys.path.insert(0, {here!r})
from _helpers import child_digests
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "classes": store.num_classes,
                  "digests": child_digests()}}))
"""


@functools.lru_cache(maxsize=1)
def child_report() -> dict[str, Any]:
    """One fresh Python process (another hash seed) that loads cached Omniglot train and draws episodes."""
    here = str(Path(__file__).resolve().parent)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", _CHILD.format(here=here)], capture_output=True, text=True,
                         timeout=300, env=env)
    if out.returncode != 0:
        raise AssertionError(f"child process failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])
