"""Held-out shots never enter text fine-tuning (``metashot.text.finetune.select_on_heldout``).

The step count and learning rate of ``finetune-top`` (RESULTS.md, text Protocol 2) are chosen on shots held
out of the K-shot support set: each fold fine-tunes the top layer on the other shots and scores
nearest-prototype accuracy on the held-out ones. A spy on ``finetune`` (the training set it is given), on
``TopLayers.forward`` under autograd (every sentence a training step sees) and on ``embed`` (what scoring
embeds) checks that a fold's held-out sentences reach scoring only. Sentences are recognised by their exact
token states, so the check does not depend on how the selection orders or indexes them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metashot.text import finetune as ft

# 4 intents x 4 shots: 2 folds of 1 held-out shot per class leave 2 shots (prototype + query) to train on.
INTENTS = {
    "card_arrival": ["I am still waiting on my card?", "My card has not arrived yet.",
                     "when will my new card get here", "has my card been posted"],
    "alarm": ["wake me up at 7 am tomorrow", "set an alarm for six", "please put an alarm at noon",
              "I need an alarm in ten minutes"],
    "exchange_rate": ["what is the exchange rate for euros", "how much is a dollar in yen",
                      "current rate from pounds to euros", "what do I get for 100 francs"],
    "play_music": ["play some jazz music", "put on my workout playlist", "I want to hear taylor swift",
                   "start the radio please"],
}
TEXTS = [t for ts in INTENTS.values() for t in ts]
LABELS = np.repeat(np.arange(len(INTENTS)), 4)
pytestmark = pytest.mark.usefixtures("one_thread")  # a few sentences: threads only spin on a shared CPU


class _Spy:
    """Records, for each ``finetune`` call (one fold and learning rate), the sentences it was given, those
    that went through the top layers with autograd on, and each set of sentences embedded for scoring."""

    def __init__(self, bank: ft.TokenBank) -> None:
        self.ids = {self._key(bank.flat[bank.offsets[i] : bank.offsets[i + 1]]): i for i in range(len(bank))}
        assert len(self.ids) == len(bank), "two sentences with identical token states cannot be told apart"
        self.runs: list[dict] = []
        self.current: dict | None = None
        self.stray_grad_forwards: list[list[int]] = []

    @staticmethod
    def _key(states: torch.Tensor) -> bytes:
        return states.detach().float().contiguous().numpy().tobytes()

    def identify(self, hidden: torch.Tensor, mask: torch.Tensor) -> list[int]:
        """Sentence index of each row of a padded batch (hidden [B, L, D], mask [B, L])."""
        out = []
        for h, n in zip(hidden, mask.sum(1).tolist(), strict=True):
            key = self._key(h[: int(n)])
            assert key in self.ids, "a sentence that is not in the support set reached the top layers"
            out.append(self.ids[key])
        return out

    def identify_bank(self, bank: ft.TokenBank) -> list[int]:
        rows = [bank.flat[bank.offsets[i] : bank.offsets[i + 1]] for i in range(len(bank))]
        return [self.ids[self._key(r)] for r in rows]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_finetune, real_embed, real_forward = ft.finetune, ft.embed, ft.TopLayers.forward
        spy = self

        def finetune(top, bank, labels, *args, **kw):
            spy.current = {"given": spy.identify_bank(bank), "trained": set(), "scored": []}
            spy.runs.append(spy.current)
            try:
                return real_finetune(top, bank, labels, *args, **kw)
            finally:
                spy.current = None

        def embed(top, bank, *args, **kw):
            if spy.current is not None:
                spy.current["scored"].append(frozenset(spy.identify_bank(bank)))
            return real_embed(top, bank, *args, **kw)

        def forward(self, hidden, mask):
            if torch.is_grad_enabled():  # a training step (scoring embeds under inference mode)
                ids = spy.identify(hidden, mask)
                if spy.current is None:
                    spy.stray_grad_forwards.append(ids)
                else:
                    spy.current["trained"].update(ids)
            return real_forward(self, hidden, mask)

        monkeypatch.setattr(ft, "finetune", finetune)
        monkeypatch.setattr(ft, "embed", embed)
        monkeypatch.setattr(ft.TopLayers, "forward", forward)


@pytest.mark.slow
def test_heldout_shots_are_scored_but_never_trained_on(minilm, monkeypatch) -> None:
    bank = ft.bottom_states(minilm, TEXTS, 1)
    spy = _Spy(bank)
    spy.install(monkeypatch)
    recs = ft.select_on_heldout(minilm.model, bank, LABELS, 1, lrs=[1e-4], checkpoints=[0, 2], holdout=1,
                                folds=2, ways=4, queries=1)
    assert [(r["steps"], len(r["fold_accs"])) for r in recs] == [(0, 2), (2, 2)]
    assert len(spy.runs) == 2 and not spy.stray_grad_forwards  # one fine-tuning per fold, nothing else

    everything = set(range(len(TEXTS)))
    held_sets = []
    for run in spy.runs:
        given = set(run["given"])
        assert len(run["given"]) == len(given)
        # scoring embeds the fine-tuning set (prototypes) and one other set: the held-out shots
        assert frozenset(given) in run["scored"]
        others = set(run["scored"]) - {frozenset(given)}
        assert len(others) == 1
        held = set(others.pop())
        assert held and held.isdisjoint(given) and held | given == everything
        assert sorted(LABELS[sorted(held)]) == list(range(len(INTENTS)))  # one held-out shot per intent
        # the spy saw training steps, and none of them touched a held-out sentence
        assert run["trained"], "the spy saw no training step"
        assert run["trained"] <= given
        assert run["trained"].isdisjoint(held)
        held_sets.append(held)
    assert held_sets[0].isdisjoint(held_sets[1])  # the folds hold out disjoint shots
