"""Encode every text dataset part once into the embedding cache and print the encoding speed as JSON.

    nice -n 10 python benchmarks/text/encode_all.py --threads 1

Later loads of the same stores are memory-mapped and never construct the encoder.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--datasets", nargs="*", default=["banking77", "clinc150", "hwu64"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from metashot.data.text import PARTS, SHOTS_SUBSETS, embed_part, fullway_rows

    for d in a.datasets:
        parts = [p for p in PARTS[d] if not (d == "hwu64" and p in ("train", "valid"))]
        for p in parts:
            t0 = time.perf_counter()
            s = embed_part(d, p)
            dt = time.perf_counter() - t0
            rec = {"dataset": d, "part": p, "sentences": len(s), "seconds": round(dt, 2),
                   "encode_seconds": s.meta.get("encode_seconds")}
            if s.meta.get("encode_seconds"):
                rec["ms_per_sentence"] = round(1000 * s.meta["encode_seconds"] / len(s), 3)
            print(json.dumps(rec), flush=True)
        for k in SHOTS_SUBSETS:
            s = embed_part(d, "train", rows=fullway_rows(d, k).tolist(), tag=f"train{k}shot")
            print(json.dumps({"dataset": d, "part": f"train_{k}", "sentences": len(s),
                              "encode_seconds": s.meta.get("encode_seconds")}), flush=True)


if __name__ == "__main__":
    main()
