"""MAML-TRPO training runs, checkpoints, resume, CLI and the half-cheetah tasks (small smoke sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metashot.checkpoint import CheckpointError
from metashot.cli import main
from metashot.rl.envs import HalfCheetahTasks, gym_halfcheetah
from metashot.rl.evaluation import evaluate_adaptation
from metashot.rl.train import RLConfig, load_policy, make_policy, train_rl


def small_nav(tmp_path, name="nav", **algo):
    return RLConfig.from_dict({
        "name": name,
        "env": {"name": "navigation2d"},
        "policy": {"hidden": [32, 32]},
        "algo": {"inner_lr": 0.5, "meta_batch": 10, "trajectories": 10, **algo},
        "train": {"iterations": 12, "seed": 3, "checkpoint_every": 4, "out_dir": str(tmp_path / name)},
        "eval": {"tasks": 10, "trajectories": 10, "steps": 1, "inner_lr": [0.5], "seed": 99},
    })


@pytest.fixture(scope="module")
def trained_nav(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl")
    cfg = small_nav(tmp)
    summary = train_rl(cfg, progress=False)
    return cfg, summary


@pytest.mark.slow
def test_short_navigation_run_learns_to_adapt(trained_nav):
    cfg, summary = trained_nav
    assert summary["iterations"] == 12
    recs = [json.loads(x) for x in (cfg.out_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == list(range(1, 13))
    policy, _, meta = load_policy(cfg.out_dir())
    assert meta["iteration"] == 12
    env = cfg.make_env()
    after = evaluate_adaptation(policy, env, 10, 10, 1, 0.5, seed=99)
    init = evaluate_adaptation(make_policy(cfg, env, cfg.train.seed), env, 10, 10, 1, 0.5, seed=99)
    # post-update beats pre-update, and meta-training raised the post-update return
    assert after["returns"][1] > after["returns"][0] + 5
    assert after["returns"][1] > init["returns"][1] + 5
    # training-time statistics agree: the post-update return of the last iterations is above pre-update
    assert np.mean([r["return_1"] - r["return_0"] for r in recs[-4:]]) > 0


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path, trained_nav):
    cfg_full, _ = trained_nav
    cfg = small_nav(tmp_path, "nav-resume")
    cfg.train.iterations = 4  # stop after 4, then continue to 12 with --resume
    train_rl(cfg, progress=False)
    cfg.train.iterations = 12
    train_rl(cfg, progress=False, resume=cfg.out_dir())
    a, _, _ = load_policy(cfg_full.out_dir() / "final")
    b, _, _ = load_policy(cfg.out_dir() / "final")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), k
    recs = [json.loads(x) for x in (cfg.out_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == list(range(1, 13))


@pytest.mark.slow
def test_first_order_and_pretrained_variants_run(tmp_path):
    for name, algo in (("fo", {"first_order": True}), ("pre", {"inner_steps": 0}),
                       ("two", {"inner_steps": 2}), ("gn", {"fvp": "gauss-newton"}),
                       ("chain", {"fvp": "chain", "fvp_workers": 2}),
                       ("chain-fo", {"fvp": "chain", "first_order": True}),
                       ("chain-pre", {"fvp": "chain", "inner_steps": 0}),
                       ("chain-two", {"fvp": "chain", "inner_steps": 2, "inner_lr": [0.3, 0.1]})):
        cfg = small_nav(tmp_path, name, **algo)
        cfg.train.iterations = 2
        s = train_rl(cfg, progress=False)
        assert s["iterations"] == 2 and all(np.isfinite(v) for k, v in s.items() if k.startswith("return_"))
    _, back, _ = load_policy(tmp_path / "chain-two" / "final")  # a list of inner step sizes round-trips
    assert back.algo.inner_lr == [0.3, 0.1] and back.algo.fvp == "chain"


@pytest.mark.slow
def test_chain_training_step_matches_double_backward(tmp_path):
    """One MAML-TRPO iteration with the chain-rule products (2 workers) moves the policy as the reference
    double backward does (float32: the same step up to rounding, which conjugate gradient on the lightly
    damped Fisher amplifies to a few 1e-3; the first-order chain, without the inner loop's Hessian, is 0.5
    away)."""
    out = {}
    for name, algo in (("ref", {}), ("chain", {"fvp": "chain", "fvp_workers": 2})):
        cfg = small_nav(tmp_path, name, **algo)
        cfg.train.iterations = 1
        train_rl(cfg, progress=False)
        out[name] = load_policy(cfg.out_dir() / "final")[0].state_dict()
    start = make_policy(small_nav(tmp_path, "x"), small_nav(tmp_path, "x").make_env(), 3).state_dict()
    d_ref = torch.cat([(out["ref"][k] - start[k]).flatten() for k in start])
    d_chain = torch.cat([(out["chain"][k] - start[k]).flatten() for k in start])
    assert d_ref.norm() > 0
    assert ((d_chain - d_ref).norm() / d_ref.norm()).item() < 1e-2


@pytest.mark.slow
def test_checkpoint_errors(tmp_path, trained_nav):
    cfg, _ = trained_nav
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(cfg.out_dir() / "final", bad)
    data = bytearray((bad / "weights.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (bad / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_policy(bad)
    with pytest.raises(CheckpointError, match="not an RL policy"):
        load_policy("protonet-omniglot")


def test_config_errors():
    with pytest.raises(ValueError, match="unknown key"):
        RLConfig.from_dict({"algo": {"inner_rate": 0.1}})
    with pytest.raises(ValueError, match="meta_batch"):
        RLConfig.from_dict({"algo": {"meta_batch": 0}})
    with pytest.raises(ValueError, match="fvp"):
        RLConfig.from_dict({"algo": {"fvp": "exact"}})
    two = RLConfig.from_dict({"algo": {"inner_steps": 2, "inner_lr": [0.5, 0.25]}})
    assert two.algo.inner_lr == [0.5, 0.25]
    assert RLConfig.from_dict({"algo": {"inner_lr": 0.5}}).algo.inner_lr == 0.5
    for bad in ([0.5, -1.0], [], -0.5, 0):
        with pytest.raises(ValueError, match="algo.inner_lr"):
            RLConfig.from_dict({"algo": {"inner_lr": bad}})
    with pytest.raises(ValueError, match="fvp_workers > 1 needs"):
        RLConfig.from_dict({"algo": {"fvp_workers": 2}})
    with pytest.raises(ValueError, match="fvp_workers"):
        RLConfig.from_dict({"algo": {"fvp": "chain", "fvp_workers": 0}})
    assert RLConfig.from_dict({"eval": {"inner_lr": 0.3}}).eval.inner_lr == [0.3]


@pytest.mark.slow
def test_cli_rl_eval_json_and_plots(tmp_path, trained_nav, capsys):
    cfg, _ = trained_nav
    rc = main(["rl", "eval", str(cfg.out_dir()), "--random", "--tasks", "4", "--trajectories", "5",
               "--steps", "2", "--json", "--plot", str(tmp_path / "ret.png"), "--paper-reference",
               "--plot-trajectories", str(tmp_path / "traj.png")])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["nav"]["returns"]) == 3 and len(rep["random-init"]["returns"]) == 3
    assert main(["rl", "eval", str(cfg.out_dir()), "--tasks", "2", "--trajectories", "2", "--steps", "1",
                 "--lr-of", "nav=0.3,0.1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nav"]["inner_lr"] == [0.3, 0.1]
    assert main(["rl", "eval", str(cfg.out_dir()), "--lr-of", "other=0.1"]) == 2
    assert (tmp_path / "ret.png").stat().st_size > 1000 and (tmp_path / "traj.png").stat().st_size > 1000
    assert main(["rl", "eval", str(tmp_path / "nothing")]) == 2
    # metashot plot recognises an RL run and draws its return curves
    assert main(["plot", str(cfg.out_dir()), "--output", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 1000


@pytest.mark.slow
def test_cli_rl_train_smoke(tmp_path, capsys):
    rc = main(["rl", "train", "configs/maml-trpo-navigation2d.yaml", "--quiet", "--set", "train.iterations=1",
               "--set", "algo.meta_batch=2", "--set", "algo.trajectories=2", "--set",
               f"train.out_dir={tmp_path / 'run'}"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["iterations"] == 1
    assert (tmp_path / "run" / "final" / "weights.safetensors").is_file()


@pytest.mark.slow
def test_halfcheetah_tasks_reward_and_gym_wrapper(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo may write MUJOCO_LOG.TXT into the working directory
    env = HalfCheetahTasks("vel", horizon=5)
    gen = torch.Generator().manual_seed(0)
    tasks = env.sample_tasks(2, gen)
    assert tasks.shape == (2, 1) and ((tasks >= 0) & (tasks <= 2)).all()
    obs = env.reset(tasks, 3, gen)
    assert obs.shape == (2, 3, 17)
    a = torch.full((2, 3, 6), 2.0)  # clipped to the action bound 1
    obs, r, done = env.step(a)
    assert obs.shape == (2, 3, 17) and r.shape == (2, 3) and not done.any()
    env.close()
    w = gym_halfcheetah("dir", horizon=5)
    o, info = w.reset(seed=0, options={"task": -1.0})
    assert info["task"] == -1.0 and o.shape == (17,)
    o, rew, term, trunc, info = w.step(np.ones(6))
    assert rew == pytest.approx(-info["x_velocity"] - 0.05 * 6)
    w.close()
    d = HalfCheetahTasks("dir")
    dirs = d.sample_tasks(200, torch.Generator().manual_seed(1))
    assert set(dirs[:, 0].tolist()) == {-1.0, 1.0}


@pytest.mark.slow
def test_bundled_navigation_policy_adapts():
    """The shipped 2D-navigation MAML policy: small, loadable by name, and one step of adaptation helps."""
    from metashot.checkpoint import bundled_path

    path = bundled_path("maml-trpo-navigation2d")
    assert path is not None and (path / "weights.safetensors").stat().st_size < 200_000
    policy, cfg, meta = load_policy("maml-trpo-navigation2d")
    assert meta["iteration"] == cfg.train.iterations == 100
    res = evaluate_adaptation(policy, cfg.make_env(), tasks=10, trajectories=10, steps=1, inner_lr=0.5,
                              seed=7)
    assert res["returns"][1] > res["returns"][0] + 10 and res["returns"][1] > -25
