"""ProtoNet evaluated with MAML's batch-norm mode: a like-for-like row for the comparison tables.

The metric-based learners (ProtoNet, Matching, Relation, Siamese, Baseline) are evaluated with the running
batch-norm statistics collected in training, so each query is classified alone (inductive). MAML, Meta-SGD,
ANIL, Reptile and Meta-LSTM normalise every forward pass with the statistics of its own batch: the support
set in adaptation, the query set in prediction (transductive). This script evaluates one ProtoNet checkpoint
on the episodes of its RESULTS figure (the checkpoint config's ``eval`` section, as ``metashot eval`` reads
it) in these modes and prints one JSON line per mode:

- ``running``: the checkpoint as shipped (running statistics); must reproduce ``metashot eval``'s figure,
  which shows that the episodes are the same.
- ``batch``: MAML's mode. Running statistics removed, so ``adapt`` embeds the support set with the support
  batch's statistics and the predictor embeds the query set with the query batch's statistics.
- ``episode``: one batch per episode: support and query items embedded together (the normalisation a
  ProtoNet sees in training, where the whole batch of episodes is one forward).

    METASHOT_DATA=../shared/data nice -n 10 python benchmarks/bn_mode.py protonet-omniglot --threads 1 \
        > results/bn/protonet-omniglot.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from torch import nn

from metashot.algorithms.protonet import ProtoNet, class_means, sq_euclidean
from metashot.checkpoint import load_checkpoint
from metashot.data import DATASETS, EpisodeSampler, load_split
from metashot.evaluate import mean_ci95
from metashot.nn.functional import batch_stats_only

MODES = ("running", "batch", "episode")


def batch_stats_copy(learner: nn.Module) -> nn.Module:
    """A copy whose batch-norm layers normalise with the current batch's statistics even in eval mode."""
    out = copy.deepcopy(learner)
    batch_stats_only(out)
    return out.eval()


def episode_logits(learner: ProtoNet, mode: str, sx: torch.Tensor, sy: torch.Tensor,
                   qx: torch.Tensor, ways: int) -> torch.Tensor:
    """Query logits [N*Q, N] of one episode (sx [N*K, C, H, W], sy [N*K], qx [N*Q, C, H, W])."""
    if mode in ("running", "batch"):  # the learner's own adapt and predictor
        return learner.adapt(sx, sy)(qx)
    z = learner.embed(torch.cat([sx, qx]))  # mode "episode": one forward, one set of statistics
    return -sq_euclidean(z[sx.shape[0]:], class_means(z[: sx.shape[0]], sy, ways))


def run(checkpoint: str, mode: str, episodes: int | None, threads: int) -> dict:
    torch.set_num_threads(threads)
    learner, meta = load_checkpoint(checkpoint)
    if not isinstance(learner, ProtoNet) or learner.distance != "sqeuclidean":
        raise ValueError(f"bn_mode: {checkpoint} is not a ProtoNet with squared Euclidean distance; "
                         f"this script evaluates ProtoNet checkpoints only")
    data, ev = meta["config"]["data"], meta["config"]["eval"]
    if episodes is None:  # as metashot eval: the ProtoNet paper's 1000 episodes on Omniglot
        episodes = DATASETS.entry(data["dataset"]).test_episodes or ev["episodes"]
    store = load_split(data["dataset"], data["test_split"], data.get("root"), data.get("image_size"),
                       **(data.get("options") or {}))
    model = learner.eval() if mode == "running" else batch_stats_copy(learner)
    ways, shots, queries, seed = ev["ways"], ev["shots"], ev["queries"], ev["seed"]
    sampler = EpisodeSampler(store, ways, shots, queries, seed=seed, tasks_per_batch=1)
    accs = np.empty(episodes)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(episodes):  # one episode per sampler index, as metashot.evaluate draws them
            b = sampler.sample(i).to("cpu")  # uint8 -> float32 in [0, 1], as metashot.evaluate does
            logits = episode_logits(model, mode, b.support_x[0], b.support_y[0], b.query_x[0], ways)
            accs[i] = float((logits.argmax(-1) == b.query_y[0]).double().mean())
    mean, ci = mean_ci95(accs)
    return {"checkpoint": checkpoint, "algorithm": learner.algorithm_name, "bn": mode,
            "dataset": store.meta.get("name", data["dataset"]), "split": data["test_split"],
            "classes": store.num_classes, "ways": ways, "shots": shots, "queries": queries,
            "episodes": episodes, "seed": seed, "acc": round(100 * mean, 4), "ci95": round(100 * ci, 4),
            "seconds": round(time.perf_counter() - t0, 2), "threads": threads, "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a ProtoNet checkpoint: bundled name or run folder")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--episodes", type=int, default=None, help="default: as metashot eval")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    for mode in a.modes:
        print(json.dumps(run(a.checkpoint, mode, a.episodes, a.threads)), flush=True)


if __name__ == "__main__":
    main()
