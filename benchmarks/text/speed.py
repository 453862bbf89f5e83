"""Text pipeline speed: encoding per 1,000 sentences, cached-store load time, cached episodes per second.

    nice -n 10 python benchmarks/text/speed.py --threads 1

Encoding uses the first 1,000 sentences of BANKING77's test part (all-MiniLM-L6-v2, batches of 64, sentences
sorted by length); the cache figures use BANKING77's fold-1 test store (27 intents, 4,662 sentences) after it
has been built. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sentences", type=int, default=1000)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from metashot.data import EpisodeSampler, load_split
    from metashot.data.text import read_part
    from metashot.text.encoder import MiniLMEncoder

    res: dict = {"threads": a.threads}
    t0 = time.perf_counter()
    enc = MiniLMEncoder()
    res["encoder_load_s"] = round(time.perf_counter() - t0, 2)
    texts = [t for t, _ in read_part("banking77", "test")][: a.sentences]
    enc.encode(texts[:64])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    enc.encode(texts)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    # wall time depends on how busy the shared machine is; process CPU time much less so
    res.update(encode_sentences=len(texts), encode_s=round(dt, 2),
               encode_wall_s_per_1000=round(1000 * dt / len(texts), 2),
               encode_cpu_s_per_1000=round(1000 * cpu / len(texts), 2))
    t0 = time.perf_counter()
    store = load_split("banking77", "test", None, fold=1)
    res["cached_store_load_s"] = round(time.perf_counter() - t0, 3)
    for shots in (1, 5):
        sampler = EpisodeSampler(store, 5, shots, 5, seed=0, tasks_per_batch=32)
        sampler.sample(0)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 2.0:
            sampler.sample(n)
            n += 1
        res[f"episodes_per_s_5w{shots}s"] = round(32 * n / (time.perf_counter() - t0))
    res["load_average_1min"] = round(os.getloadavg()[0], 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
