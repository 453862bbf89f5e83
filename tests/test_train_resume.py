"""End to end: a real SIGTERM to a `metashot train` process, `metashot train --resume`, and the final weights
are exactly those of an uninterrupted run (Omniglot, a conv4 with 8 channels, 5-way 1-shot)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metashot.checkpoint import load_train_state, read_meta
from metashot.config import load_config
from metashot.plot import plot_run
from metashot.train import train_from_config

pytestmark = pytest.mark.slow

STEPS = 100
CONFIG = f"""
name: resume-test
data: {{dataset: omniglot, image_size: 28}}
model: {{algorithm: protonet, backbone: conv4, backbone_args: {{in_channels: 1, hidden: 8, out_channels: 8}}}}
episodes: {{ways: 5, shots: 1, queries: 2, meta_batch: 2}}
train: {{steps: {STEPS}, lr: 0.002, lr_schedule: cosine, log_every: 10, val_every: 30, val_episodes: 8,
         checkpoint_every: 40, threads: 1, seed: 5}}
eval: {{ways: 5, shots: 1, queries: 2, meta_batch: 8}}
"""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "metashot.cli", *args]


def _records(run: Path) -> list[dict]:
    drop = ("steps_per_s", "episodes_per_s", "elapsed_s")
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def test_sigterm_then_resume_equals_uninterrupted_run(tmp_path: Path, data_root: Path) -> None:
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(CONFIG)
    cut, full = tmp_path / "cut", tmp_path / "full"
    env = dict(os.environ, METASHOT_DATA=str(data_root))
    proc = subprocess.Popen(
        _cli("train", str(cfg_file), "--set", f"train.out_dir={cut}", "--quiet"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The uninterrupted reference runs in this process meanwhile (same code, one thread, same seed).
    threads = torch.get_num_threads()
    try:
        train_from_config(load_config(cfg_file, [f"train.out_dir={full}"]), progress=False)
    finally:
        torch.set_num_threads(threads)
    metrics = cut / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().strip()) and proc.poll() is None:
        assert time.monotonic() < deadline, "training subprocess wrote no metrics within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    summary = json.loads(out.strip().splitlines()[-1])
    stopped = summary["interrupted_at_step"]
    assert 10 <= stopped < STEPS, summary
    assert read_meta(cut / "last")["step"] == stopped
    assert load_train_state(cut / "last")[1]["step"] == stopped
    assert not (cut / "final").exists()

    res = subprocess.run(
        _cli("train", "--resume", str(cut), "--quiet"), env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["steps"] == STEPS

    for name in ("final", "best"):
        a = load_file(str(full / name / "weights.safetensors"))
        b = load_file(str(cut / name / "weights.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}/{k} differs after resume (stopped at step {stopped})"
    sa, _ = load_train_state(full / "last")
    sb, _ = load_train_state(cut / "last")
    for k in sa:
        if k.startswith("optim."):
            assert torch.equal(sa[k], sb[k]), k
    assert _records(full) == _records(cut)  # same losses, accuracies, learning rates and validations

    png = plot_run(cut)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
