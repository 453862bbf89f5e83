"""Exact figures of the shipped models on small fixed sets, so that any drift (weights, preprocessing, episode
sampling, the algorithm's forward pass, the RL rollout) fails here instead of only moving RESULTS.md.

Each figure is the model's own evaluation protocol (its checkpoint's ``eval`` section) cut to a few episodes
or goals. After a deliberate change, the comment above each pin says how to print the new values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metashot.checkpoint import load_checkpoint
from metashot.cli import main
from metashot.data.episodes import EpisodeSampler
from metashot.evaluate import episode_accuracies

# Thresholds of the query-loss pins: one thread against two moves the Meta-LSTM figure by 2e-7 (relative); a
# 1e-4 relative perturbation of every weight moves either figure by 1.7e-4 or more.
LOSS_RTOL = 1e-5


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """`metashot eval --threads` and `metashot rl eval` (default 1) set the thread count; give it back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _correct_per_episode(name: str, store, episodes: int) -> tuple[list[int], dict]:
    """Correct queries of each of the first ``episodes`` episodes of the checkpoint's own eval protocol."""
    learner, meta = load_checkpoint(name)
    ev = meta["config"]["eval"]
    accs = episode_accuracies(learner, store, ev["ways"], ev["shots"], ev["queries"], episodes, ev["seed"],
                              ev["meta_batch"], progress=False)
    n_query = ev["ways"] * ev["queries"]
    correct = np.rint(accs * n_query)
    assert np.allclose(correct, accs * n_query, atol=1e-9)  # whole queries
    return [int(c) for c in correct], ev


def _query_loss(name: str, store, episodes: int) -> float:
    """Mean query cross-entropy (float64, nats) of the same episodes through ``adapt``: unlike the accuracy,
    it moves with any change of the logits."""
    learner, meta = load_checkpoint(name)
    ev = meta["config"]["eval"]
    sampler = EpisodeSampler(store, ev["ways"], ev["shots"], ev["queries"], seed=ev["seed"])
    total = 0.0
    with torch.no_grad():
        for i in range(episodes):
            sx, sy, qx, qy = sampler.sample(i).to("cpu").task(0)
            logits = learner.adapt(sx, sy)(qx)
            total += F.cross_entropy(logits.double(), qy, reduction="sum").item()
    return total / (episodes * len(qy))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_protonet_omniglot_pinned_on_40_test_episodes(omniglot_test):
    """5-way 1-shot, 15 queries, seed 1234, Vinyals test split: 2949 of 3000 queries (98.30 %)."""
    # (print(correct, loss) gives the pinned values after a deliberate change)
    correct, ev = _correct_per_episode("protonet-omniglot", omniglot_test, 40)
    assert (ev["ways"], ev["shots"], ev["queries"], ev["seed"]) == (5, 1, 15, 1234)
    assert correct == PROTONET_CORRECT
    assert sum(correct) == 2949
    assert sum(correct) / (40 * 75) == pytest.approx(0.983, abs=1e-9)
    loss = _query_loss("protonet-omniglot", omniglot_test, 40)
    assert loss == pytest.approx(0.0653270, rel=LOSS_RTOL)


PROTONET_CORRECT = [74, 74, 74, 66, 75, 73, 75, 75, 75, 74, 75, 70, 75, 75, 71, 74, 75, 74, 75, 75,
                    74, 74, 75, 75, 74, 75, 75, 75, 75, 74, 74, 74, 73, 75, 75, 74, 61, 74, 74, 75]


@pytest.mark.slow
@pytest.mark.usefixtures("data_root", "restore_threads")  # data_root: missing data fails, never downloads
def test_protonet_omniglot_cli_eval_gives_the_same_figure(capsys):
    """The same 40 episodes through `metashot eval` (split and protocol: the checkpoint's own)."""
    assert main(["eval", "protonet-omniglot", "--episodes", "40", "--threads", "1", "--quiet", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (res["dataset"], res["ways"], res["shots"], res["queries"], res["seed"]) == (
        "omniglot/test", 5, 1, 15, 1234)
    assert res["acc"] == pytest.approx(98.3, abs=1e-9)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_metalstm_omniglot_pinned_on_10_test_episodes(omniglot_test):
    """5-way 1-shot, 15 queries, seed 1234, Vinyals test split: 723 of 750 queries (96.40 %)."""
    # (print(correct, loss) gives the pinned values after a deliberate change)
    correct, ev = _correct_per_episode("metalstm-omniglot", omniglot_test, 10)
    assert (ev["ways"], ev["shots"], ev["queries"], ev["seed"]) == (5, 1, 15, 1234)
    assert correct == [75, 73, 74, 63, 74, 71, 75, 74, 71, 73]
    assert sum(correct) == 723
    assert sum(correct) / (10 * 75) == pytest.approx(723 / 750, abs=1e-9)
    loss = _query_loss("metalstm-omniglot", omniglot_test, 10)
    assert loss == pytest.approx(0.0861689, rel=LOSS_RTOL)


@pytest.mark.slow
@pytest.mark.usefixtures("restore_threads")
def test_maml_trpo_navigation2d_pinned_on_40_test_goals(capsys):
    """RESULTS.md's first 2D-navigation row: 40 test goals (seed 1234), 40 trajectories per step, steps 0.5
    then 0.15; returns after 0-3 steps -39.70 / -11.19 / -3.45 / -3.02 (printed to 2 decimals; pinned to
    1e-4 here, the evaluation is deterministic on one thread)."""
    # (the command's JSON output gives the pinned values after a deliberate change)
    assert main(["rl", "eval", "maml-trpo-navigation2d", "--lr-of", "maml-trpo-navigation2d=0.5,0.15",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])["maml-trpo-navigation2d"]
    assert (res["env"], res["tasks"], res["trajectories"], res["seed"]) == ("navigation2d", 40, 40, 1234)
    assert res["returns"] == pytest.approx([-39.70423, -11.18540, -3.45056, -3.02249], abs=1e-4)
    assert res["ci95"] == pytest.approx([4.68327, 2.42110, 0.59138, 0.52557], abs=1e-4)
    # the printed precision of RESULTS.md's table
    assert [f"{r:.2f}" for r in res["returns"]] == ["-39.70", "-11.19", "-3.45", "-3.02"]
