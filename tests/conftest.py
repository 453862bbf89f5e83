"""Shared fixtures. Data-dependent tests FAIL (never skip) when the data is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("METASHOT_DATA", str(DEFAULT_DATA))
os.environ.setdefault("METASHOT_CACHE", str(REPO / "cache" / "stores"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ["METASHOT_DATA"])
    needed = [root / "omniglot" / "images_background.zip", root / "omniglot" / "images_evaluation.zip"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.fail(f"test data missing: {missing}. Set METASHOT_DATA to the shared data folder "
                    f"(../shared/data beside the repository)", pytrace=False)
    return root


@pytest.fixture(scope="session")
def text_data_root() -> Path:
    root = Path(os.environ["METASHOT_DATA"])
    needed = [root / "text" / "banking77" / "train.csv", root / "text" / "clinc150" / "data_full.json",
              root / "text" / "hwu64" / "kfold1_original" / "train.csv"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.fail(f"text test data missing: {missing}. Set METASHOT_DATA to the shared data folder "
                    f"(../shared/data beside the repository)", pytrace=False)
    return root


@pytest.fixture(scope="session")
def omniglot_test(data_root: Path):
    from metashot.data.omniglot import omniglot

    return omniglot("test", data_root)


@pytest.fixture(scope="session")
def omniglot_train(data_root: Path):
    from metashot.data.omniglot import omniglot

    return omniglot("train", data_root)


@pytest.fixture
def one_thread():
    """Tiny networks gain nothing from intra-op threads, which only spin on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def meta_train():
    """``meta_train(learner, sampler, steps, lr=3e-3)``: plain Adam meta-training on batches 0..steps-1;
    returns the last step's metrics."""

    def run(learner, sampler, steps: int, lr: float = 3e-3) -> dict:
        opt = torch.optim.Adam(learner.parameters(), lr=lr)
        metrics: dict = {}
        for i in range(steps):
            loss, metrics = learner.meta_loss(sampler.sample(i).to("cpu"))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return metrics

    return run
