"""The task distributions: 2D navigation (batched and Gymnasium forms) and the half-cheetah rewards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metashot.rl.envs import Navigation2D, cheetah_reward, gym_navigation2d, make_env


def test_navigation_step_reward_and_clipping_by_hand():
    env = Navigation2D(horizon=100, action_scale=1.0)
    goals = torch.tensor([[0.3, -0.2], [0.0, 0.05]], dtype=torch.float64)
    obs = env.reset(goals, 2)
    assert obs.shape == (2, 2, 2) and torch.all(obs == 0)
    # task 0 traj 0 moves (0.05, -0.3) -> clipped to (0.05, -0.1); traj 1 moves (-0.02, 0.04)
    a = torch.tensor([[[0.05, -0.3], [-0.02, 0.04]], [[0.0, 0.2], [0.0, 0.0]]], dtype=torch.float64)
    obs, r, done = env.step(a)
    assert torch.allclose(obs[0, 0], torch.tensor([0.05, -0.1], dtype=torch.float64))
    assert torch.allclose(obs[1, 0], torch.tensor([0.0, 0.1], dtype=torch.float64))
    assert r[0, 0].item() == pytest.approx(-math.hypot(0.05 - 0.3, -0.1 + 0.2))
    assert r[0, 1].item() == pytest.approx(-math.hypot(-0.02 - 0.3, 0.04 + 0.2))
    assert r[1, 0].item() == pytest.approx(-math.hypot(0.0, 0.1 - 0.05))
    assert r[1, 1].item() == pytest.approx(-0.05)
    assert not done.any()
    # reaching within 0.01 on both axes ends the episode
    obs, r, done = env.step(torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.0, -0.045], [0.0, 0.0]]],
                                         dtype=torch.float64))
    assert done.tolist() == [[False, False], [True, False]]
    assert r[1, 0].item() == pytest.approx(-0.005)


def test_navigation_action_scale_is_rllab_normalize():
    # rllab's normalize(): a -> lb + (a + 1) / 2 * (ub - lb) = 0.1 a for bounds +-0.1, then clipped
    env = Navigation2D()
    env.reset(torch.tensor([[0.5, 0.5]], dtype=torch.float64), 1)
    obs, _, _ = env.step(torch.tensor([[[0.4, -3.0]]], dtype=torch.float64))
    assert torch.allclose(obs[0, 0], torch.tensor([0.04, -0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="action_scale"):
        Navigation2D(action_scale=0)


def test_navigation_observe_goal_and_bad_inputs():
    env = Navigation2D(observe_goal=True)
    obs = env.reset(torch.tensor([[0.1, 0.2]]), 3)
    assert obs.shape == (1, 3, 4)
    assert torch.allclose(obs[0, :, 2:], torch.tensor([0.1, 0.2], dtype=torch.float64))
    with pytest.raises(ValueError, match="goals"):
        env.reset(torch.zeros(3), 1)
    with pytest.raises(ValueError, match="actions"):
        env.step(torch.zeros(2, 3, 2))
    with pytest.raises(RuntimeError, match="reset"):
        Navigation2D().step(torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="unknown RL environment"):
        make_env("cartpole")


def test_gymnasium_navigation_matches_batched():
    env = gym_navigation2d()
    obs, info = env.reset(seed=0, options={"task": (0.2, 0.3)})
    assert np.allclose(obs, 0) and np.allclose(info["goal"], [0.2, 0.3])
    batched = Navigation2D(action_scale=1.0)  # the Gymnasium form takes actions in position units
    batched.reset(torch.tensor([[0.2, 0.3]], dtype=torch.float64), 1)
    rng = np.random.default_rng(0)
    steps = 0
    for _ in range(100):
        steps += 1
        a = rng.uniform(-0.2, 0.2, size=2)
        o1, r1, term, trunc, _ = env.step(a)
        o2, r2, d2 = batched.step(torch.as_tensor(a)[None, None])
        assert np.allclose(o1, o2[0, 0].numpy()) and r1 == pytest.approx(float(r2[0, 0]))
        assert term == bool(d2[0, 0])
        if term:
            break
    assert trunc == (steps == 100 and not term)


def test_cheetah_rewards_by_hand():
    v = np.array([1.0, 0.5, -2.0])
    a = np.array([[0.1] * 6, [0.0] * 6, [1.0] * 6])
    goal = np.array([1.5, 0.5, 1.0])
    np.testing.assert_allclose(cheetah_reward("vel", v, a, goal), [-0.5 - 0.05 * 0.06, 0.0, -3.0 - 0.3])
    np.testing.assert_allclose(cheetah_reward("dir", v, a, np.array([1.0, -1.0, -1.0])),
                               [1.0 - 0.003, -0.5, 2.0 - 0.3])
    with pytest.raises(ValueError):
        cheetah_reward("jump", v, a, goal)
