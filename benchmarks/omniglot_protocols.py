"""An Omniglot checkpoint on the Vinyals test split under the two protocols that papers use.

The Vinyals test split holds 423 characters, each in four rotations (0/90/180/270 degrees) that count as
classes of their own: 1,692 classes. ``metashot eval`` draws episodes from all of them, as the ProtoNet code
does (protocol ``rotated``). Other papers and re-checks draw only from the 423 characters as drawn
(protocol ``unrotated``: the ``rot000`` classes). Same ways, shots, queries, episode count and seed for
both (the checkpoint config's ``eval`` section, read as ``metashot eval`` reads it); the episodes differ,
since they are drawn from different class pools. One JSON line per protocol.

    METASHOT_DATA=../shared/data nice -n 10 python benchmarks/omniglot_protocols.py protonet-omniglot \
        --threads 1 > results/omniglot/protocols.jsonl
"""

from __future__ import annotations

import argparse
import json

import torch

from metashot.checkpoint import load_checkpoint
from metashot.data import DATASETS, load_split
from metashot.evaluate import evaluate

PROTOCOLS = ("rotated", "unrotated")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="bundled name or run folder of an Omniglot checkpoint")
    ap.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    ap.add_argument("--episodes", type=int,
                    default=DATASETS.entry("omniglot").test_episodes, help="as metashot eval on Omniglot")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    learner, meta = load_checkpoint(a.checkpoint)
    data, ev = meta["config"]["data"], meta["config"]["eval"]
    if data["dataset"] != "omniglot" or data["test_split"] != "test":
        raise ValueError(f"omniglot_protocols: {a.checkpoint} evaluates on {data['dataset']}/"
                         f"{data['test_split']}; this script needs an Omniglot (Vinyals split) checkpoint")
    rotated = load_split("omniglot", "test", data.get("root"), data.get("image_size"),
                         **(data.get("options") or {}))
    for protocol in a.protocols:
        store = rotated
        if protocol == "unrotated":
            store = rotated.subset([n for n in rotated.class_names if n.endswith("/rot000")])
        res = evaluate(learner, store, ev["ways"], ev["shots"], ev["queries"], a.episodes, ev["seed"],
                       ev.get("meta_batch", 16), progress=False)
        res.update(checkpoint=a.checkpoint, protocol=protocol, classes=store.num_classes,
                   threads=a.threads, torch=torch.__version__)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
