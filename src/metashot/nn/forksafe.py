"""Fork safety of PyTorch's CPU thread pool (issue 20).

PyTorch's CPU wheels use GNU OpenMP (libgomp), which has no fork handler: a process that forks after its
intra-op thread pool has started (any parallel op with ``torch.get_num_threads() > 1``) gets a child whose
first parallel op waits forever for pool threads that do not exist there (GCC bug 52303). That is what a
DataLoader with workers, ``multiprocessing``'s fork context or a plain ``os.fork`` do. Re-setting the same
thread count in the child does not help; one thread does (PyTorch's own DataLoader workers do the same).

Importing metashot registers :func:`_single_thread_in_child`, so every forked child of a metashot process
runs its torch CPU ops on one thread instead of hanging. ``subprocess`` (fork + exec) is not affected.
"""

from __future__ import annotations

import os

import torch


def _single_thread_in_child() -> None:
    try:
        torch.set_num_threads(1)
    except Exception:  # never break a fork over this
        pass


os.register_at_fork(after_in_child=_single_thread_in_child)
