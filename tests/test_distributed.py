"""Two processes under torchrun (gloo, CPU) train exactly like one process with the same total meta-batch.

ProtoNet runs with a backbone without batch norm: its batched meta_loss normalises over every task of the
batch at once, so with batch norm a rank's share would see other statistics than the full batch. Without it,
the loss is a mean over tasks, the average of the two ranks' means is the global mean, and the all-reduced
gradient equals the single-process gradient up to float summation order. MAML (second order, vmap over tasks,
functional inner loop) keeps its batch norm: in its default ``bn="batch"`` mode each task normalises over its
own support or query set, so its loss is a mean over tasks as well.
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

ctx = distributed.init_from_env("cpu")
for name, d in json.loads(sys.argv[1]).items():  # several runs in one launch: one process start-up
    trainer = build_trainer(Config.from_dict(d), progress=False, dist=ctx)
    trainer.fit()
    state = {k: v.detach().contiguous() for k, v in trainer.learner.state_dict().items()}
    save_file(state, f"{sys.argv[2]}/{name}-rank{ctx.rank}.safetensors")
distributed.shutdown()
"""
)


def _config(out_dir: Path, algorithm: str = "protonet") -> Config:
    if algorithm == "protonet":
        model = {
            "algorithm": "protonet",
            "backbone": "test_flat_mlp",
            "backbone_args": {"hidden": 16, "out": 8},
        }
        extra = {"val_every": 3, "val_episodes": 4, "checkpoint_every": 2}
    else:
        model = {
            "algorithm": "maml",
            "backbone": "maml_omniglot",
            "backbone_args": {"in_channels": 1, "hidden": 4, "out_features": 5},
            "algorithm_args": {"inner_lr": 0.4, "inner_steps": 1},
        }
        extra = {}
    return Config.from_dict(
        {
            "name": f"dist-test-{algorithm}",
            "data": {"dataset": "omniglot", "image_size": 28},
            "model": model,
            "episodes": {"ways": 5, "shots": 1, "queries": 2, "meta_batch": 4},
            # SGD, not Adam: ProtoNet's last bias cancels in the squared distance, so its gradient is rounding
            # noise that Adam's normalisation would turn into lr-sized steps of random sign in each run
            "train": {
                "steps": 3,
                "optimizer": "sgd",
                "lr": 0.05,
                "lr_schedule": "constant",
                "log_every": 1,
                "threads": 1,
                "seed": 2,
                "out_dir": str(out_dir),
                **extra,
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


@pytest.mark.slow
def test_torchrun_two_ranks_equal_single_process(tmp_path: Path, data_root: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    algos = ("protonet", "maml")
    runs = {a: _config(tmp_path / f"dist-{a}", a).to_dict() for a in algos}
    env = dict(os.environ, METASHOT_DATA=str(data_root), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(worker),
        json.dumps(runs),
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # single-process references with the same total meta-batch, in this process while torchrun runs
    if "test_flat_mlp" not in backbones.available_backbones():
        exec(compile(BACKBONE, "test_flat_mlp", "exec"), {})
    from metashot.train import build_trainer

    threads = torch.get_num_threads()
    single = {}
    try:
        for a in algos:
            single[a] = build_trainer(
                _config(tmp_path / f"single-{a}", a), progress=False, dist=DistContext()
            )
            single[a].fit()
    finally:
        torch.set_num_threads(threads)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]

    for a in algos:
        r0 = load_file(str(tmp_path / f"{a}-rank0.safetensors"))
        r1 = load_file(str(tmp_path / f"{a}-rank1.safetensors"))
        ref = {k: v.detach() for k, v in single[a].learner.state_dict().items()}
        start = _fresh_params(a)
        assert r0.keys() == ref.keys()
        for k in ref:
            assert torch.equal(r0[k], r1[k]), f"{a}: {k} differs between ranks"
            torch.testing.assert_close(
                r0[k], ref[k], rtol=1e-5, atol=1e-6, msg=f"{a}: {k}: 2 ranks != 1 process"
            )
        assert any(not torch.equal(ref[k], start[k]) for k in ref), f"{a} did not train"

        # only rank 0 logged and wrote checkpoints: one record per step, global metrics
        run = tmp_path / f"dist-{a}"
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in recs if "loss" in r]
        assert [r["step"] for r in train] == [1, 2, 3]
        single_train = [r for r in single[a].history if "loss" in r]
        for x, y in zip(train, single_train, strict=True):
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["acc"] == pytest.approx(y["acc"])
        final = load_file(str(run / "final" / "weights.safetensors"))
        assert all(torch.equal(final[k], r0[k]) for k in final)
    recs = [
        json.loads(line) for line in (tmp_path / "dist-protonet" / "metrics.jsonl").read_text().splitlines()
    ]
    assert sum("val_acc" in r for r in recs) == 1 and (tmp_path / "dist-protonet" / "best").is_dir()
    assert (tmp_path / "dist-protonet" / "last" / "train_state.json").is_file()


def _fresh_params(algorithm: str) -> dict[str, torch.Tensor]:
    """The initial weights build_trainer draws for seed 2 (to show that training moved them)."""
    from metashot.checkpoint import build_learner

    torch.manual_seed(2)
    return build_learner(dict(_config(Path("unused"), algorithm).model.__dict__)).state_dict()
