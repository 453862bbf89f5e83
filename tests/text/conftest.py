"""Fixtures for the text tests (``text_data_root`` is in tests/conftest.py: the text parsers' tests are in
tests/data).

Choice (documented in RESULTS.md): CI installs the ``text`` extra (``.ci/run`` installs ``.[dev,text]``), so
tests that need the real all-MiniLM-L6-v2 encoder use it on a few dozen sentences and FAIL, never skip, when
the extra is missing. Everything that would otherwise encode a whole dataset (parsers, splits, the cache, the
trainer on text) runs on the dependency-free ``hashing-bow`` encoder and a temporary cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm():
    """The real encoder; fails with the install command when the text extra is missing."""
    from metashot.text.encoder import get_encoder

    try:
        return get_encoder("all-MiniLM-L6-v2")
    except ImportError as e:
        pytest.fail(f"the text extra is not installed ({e}); run: "
                    f"pip install -c constraints.txt -e '.[dev,text]'", pytrace=False)


@pytest.fixture()
def hashing():
    from metashot.text.encoder import HashingEncoder

    return HashingEncoder(dim=64)


@pytest.fixture(scope="session")
def text_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One temporary embedding cache per test session, so each part is hash-encoded once."""
    return tmp_path_factory.mktemp("text-cache")
