"""Two processes under torchrun (gloo, CPU) train exactly like one process with the same total meta-batch.

The backbone has no batch norm: ProtoNet's batched meta_loss normalises over every task of the batch at
once, so with batch norm a rank's share would see other statistics than the full batch. Without it, the loss
is a mean over tasks, the average of the two ranks' means is the global mean, and the all-reduced gradient
equals the single-process gradient up to float summation order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metashot.config import Config
from metashot.distributed import DistContext
from metashot.nn import backbones

BACKBONE = '''
from torch import nn
from metashot.nn.backbones import register_backbone


@register_backbone("test_flat_mlp")
def test_flat_mlp(hidden: int = 16, out: int = 8) -> nn.Module:
    """Flatten + Linear-ReLU-Linear on 28x28 images; no batch norm (see the test's docstring)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, out))
'''

WORKER = (
    BACKBONE
    + """
import json, sys
import torch
from safetensors.torch import save_file
from metashot import distributed
from metashot.config import Config
from metashot.train import build_trainer

cfg = Config.from_dict(json.loads(sys.argv[1]))
ctx = distributed.init_from_env("cpu")
trainer = build_trainer(cfg, progress=False, dist=ctx)
summary = trainer.fit()
state = {k: v.detach().contiguous() for k, v in trainer.learner.state_dict().items()}
save_file(state, f"{sys.argv[2]}/rank{ctx.rank}.safetensors")
distributed.shutdown()
"""
)


def _config(out_dir: Path) -> Config:
    return Config.from_dict(
        {
            "name": "dist-test",
            "data": {"dataset": "omniglot", "image_size": 28},
            "model": {
                "algorithm": "protonet",
                "backbone": "test_flat_mlp",
                "backbone_args": {"hidden": 16, "out": 8},
            },
            "episodes": {"ways": 5, "shots": 1, "queries": 2, "meta_batch": 4},
            "train": {
                "steps": 3,
                "optimizer": "sgd",
                "lr": 0.05,
                "lr_schedule": "constant",
                "log_every": 1,
                "val_every": 3,
                "val_episodes": 4,
                "checkpoint_every": 2,
                "threads": 1,
                "seed": 2,
                "out_dir": str(out_dir),
            },
            "eval": {"ways": 5, "shots": 1, "queries": 2, "meta_batch": 4},
        }
    )


def test_task_slices_partition_the_meta_batch() -> None:
    for world in (1, 2, 3, 4):
        for tasks in range(world, 11):
            slices = [DistContext(r, world).task_slice(tasks) for r in range(world)]
            covered = [i for s in slices for i in range(tasks)[s]]
            assert covered == list(range(tasks))
            assert max(s.stop - s.start for s in slices) - min(s.stop - s.start for s in slices) <= 1
    with pytest.raises(ValueError, match="meta_batch=1 is smaller than the world size 2"):
        DistContext(0, 2).task_slice(1)


def test_torchrun_two_ranks_equal_single_process(tmp_path: Path, data_root: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    dist_run = tmp_path / "dist"
    env = dict(os.environ, METASHOT_DATA=str(data_root), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(worker),
        json.dumps(_config(dist_run).to_dict()),
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # single-process reference with the same total meta-batch, in this process while torchrun starts
    if "test_flat_mlp" not in backbones.available_backbones():
        exec(compile(BACKBONE, "test_flat_mlp", "exec"), {})
    from metashot.train import build_trainer

    threads = torch.get_num_threads()
    try:
        single = build_trainer(_config(tmp_path / "single"), progress=False, dist=DistContext())
        single.fit()
    finally:
        torch.set_num_threads(threads)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]

    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    ref = {k: v.detach() for k, v in single.learner.state_dict().items()}
    start = {k: v.detach() for k, v in _fresh_params().items()}
    for k in ref:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks"
        torch.testing.assert_close(r0[k], ref[k], rtol=1e-5, atol=1e-6, msg=f"{k}: 2 ranks != 1 process")
    # (SGD, not Adam: the last bias cancels in the squared distance, so its gradient is rounding noise that
    # Adam's normalisation would blow up to lr-sized steps of random sign in each run)
    assert not torch.equal(ref["backbone.1.weight"], start["backbone.1.weight"]), "did not train"

    # only rank 0 logged and wrote checkpoints: one record per step, one validation, global metrics
    recs = [json.loads(line) for line in (dist_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3] and sum("val_acc" in r for r in recs) == 1
    single_train = [r for r in single.history if "loss" in r]
    for a, b in zip(train, single_train, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["acc"] == pytest.approx(b["acc"])
    assert (dist_run / "final").is_dir() and (dist_run / "best").is_dir()
    final = load_file(str(dist_run / "final" / "weights.safetensors"))
    assert all(torch.equal(final[k], r0[k]) for k in final)


def _fresh_params() -> dict[str, torch.Tensor]:
    """The initial weights build_trainer draws for seed 2 (to show that training moved them)."""
    from metashot.checkpoint import build_learner

    torch.manual_seed(2)
    return build_learner(dict(_config(Path("unused")).model.__dict__)).state_dict()
