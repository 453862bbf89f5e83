"""Episodic fine-tuning of MiniLM's top layers (metashot.text.finetune) on a few real sentences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metashot.text import finetune as ft

SUPPORT = [
    ("I am still waiting on my card?", "card_arrival"), ("My card has not arrived yet.", "card_arrival"),
    ("when will my new card get here", "card_arrival"),
    ("wake me up at 7 am tomorrow", "alarm"), ("set an alarm for six", "alarm"),
    ("please put an alarm at noon", "alarm"),
    ("what is the exchange rate for euros", "exchange_rate"),
    ("how much is a dollar in yen", "exchange_rate"),
    ("current rate from pounds to euros", "exchange_rate"),
    ("play some jazz music", "play_music"), ("put on my workout playlist", "play_music"),
    ("I want to hear taylor swift", "play_music"),
]
TEXTS = [t for t, _ in SUPPORT]
LABELS = np.repeat(np.arange(4), 3)
pytestmark = pytest.mark.usefixtures("one_thread")  # a few sentences: threads only spin on a shared CPU


@pytest.mark.parametrize("n_top", [1, 2])
@pytest.mark.slow
def test_zero_steps_reproduce_frozen_encoder(minilm, n_top: int) -> None:
    bank = ft.bottom_states(minilm, TEXTS, n_top)
    assert len(bank) == len(TEXTS) and bank.dim == 384
    top = ft.TopLayers(minilm.model, n_top)
    ft.finetune(top, bank, LABELS, steps=0)
    np.testing.assert_allclose(ft.embed(top, bank, batch_size=5).numpy(), minilm.encode(TEXTS), atol=1e-5)
    # the trainable copy never touches the shared encoder
    shared = minilm.model.encoder.layer[6 - n_top].attention.self.query.weight
    assert top.layers[0].attention.self.query.weight is not shared


def _eval_loss(top: ft.TopLayers, bank: ft.TokenBank) -> float:
    top.eval()
    rows = ft.class_rows(LABELS)
    with torch.no_grad():
        return float(np.mean([ft.episode_loss(top, bank, rows, np.random.default_rng(s), 4, 1, 10.0).item()
                              for s in range(4)]))


@pytest.mark.slow
def test_few_steps_lower_the_episodic_loss_deterministically(minilm) -> None:
    bank = ft.bottom_states(minilm, TEXTS, 1)
    runs = []
    for _ in range(2):
        top = ft.TopLayers(minilm.model, 1)
        before = _eval_loss(top, bank)
        losses = ft.finetune(top, bank, LABELS, steps=8, lr=1e-4, ways=4, queries=1, seed=3)
        runs.append((losses, ft.embed(top, bank)))
        assert _eval_loss(top, bank) < 0.8 * before
    assert runs[0][0] == runs[1][0]  # same seed, same episodes and dropout masks
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)
    # the shared encoder is unchanged
    np.testing.assert_allclose(ft.embed(ft.TopLayers(minilm.model, 1), bank).numpy(), minilm.encode(TEXTS),
                               atol=1e-5)


@pytest.mark.slow
def test_heldout_selection_records(minilm) -> None:
    bank = ft.bottom_states(minilm, TEXTS, 1)
    recs = ft.select_on_heldout(minilm.model, bank, LABELS, 1, lrs=[1e-4], checkpoints=[2, 0], holdout=1,
                                ways=4, queries=1)
    assert [(r["lr"], r["steps"], len(r["fold_accs"])) for r in recs] == [(1e-4, 0, 1), (1e-4, 2, 1)]
    assert all(0 <= r["heldout_acc"] <= 100 for r in recs)
    assert recs[0]["heldout_acc"] >= 75  # frozen MiniLM: 2-shot prototypes of 4 distinct intents
    with pytest.raises(ValueError, match="fewer than 2 shots"):
        ft.select_on_heldout(minilm.model, bank, LABELS, 1, lrs=[1e-4], checkpoints=[0], folds=2)


def test_token_bank_padding_and_checks() -> None:
    flat = torch.arange(12, dtype=torch.float32).view(6, 2)
    bank = ft.TokenBank(flat, np.array([0, 1, 4, 6]))
    h, m = bank.batch([2, 0])
    assert h.shape == (2, 2, 2) and m.tolist() == [[1, 1], [1, 0]]
    assert h[0].tolist() == [[8, 9], [10, 11]] and h[1, 1].tolist() == [0, 0]
    with pytest.raises(ValueError, match="non-empty"):
        ft.TokenBank(flat, np.array([0, 0, 6]))
    with pytest.raises(ValueError, match="n_top"):
        ft._check_n_top(7)


@pytest.mark.slow
def test_part_token_bank_matches_embedding_store(minilm, text_data_root, tmp_path) -> None:
    from metashot.data.text import embed_part

    rows = [0, 1, 2, 3, 5000, 5001]  # a few intents, unsorted labels: checks the store order
    bank = ft.part_token_bank("banking77", "train", 1, rows=rows, tag="t", root=text_data_root,
                              cache_dir=tmp_path, encoder=minilm)
    store = embed_part("banking77", "train", text_data_root, minilm, tmp_path, rows=rows, tag="t")
    np.testing.assert_allclose(ft.embed(ft.TopLayers(minilm.model, 1), bank).numpy(), store.images.numpy(),
                               atol=1e-5)
    again = ft.part_token_bank("banking77", "train", 1, rows=rows, tag="t", root=text_data_root,
                               cache_dir=tmp_path, encoder=object())  # cached: the encoder is not used
    torch.testing.assert_close(again.flat, bank.flat)
