"""Task distributions for meta-reinforcement learning, each in two forms.

- A *batched* environment (:class:`Navigation2D`, :class:`HalfCheetahTasks`) that steps ``T`` tasks x ``N``
  trajectories at once: ``reset(tasks, n) -> obs [T, N, obs_dim]``; ``step(actions [T, N, act_dim]) ->
  (obs, reward [T, N], done [T, N])``. The samplers and the trainer use this form.
- A single `Gymnasium <https://gymnasium.farama.org>`_ environment per task (:func:`gym_navigation2d`,
  :func:`gym_halfcheetah`, needing ``pip install 'metashot[rl]'``) for users who bring their own RL
  code; ``options={"task": ...}`` in ``reset`` picks the task.

2D navigation follows the official MAML code (cbfinn/maml_rl, ``point_env_randgoal.py``): the agent starts at
(0, 0), goals are uniform in [-0.5, 0.5]^2, the observation is the position, actions are clipped to
[-0.1, 0.1]^2 and added to the position, the reward is minus the Euclidean distance to the goal after the
move, and the episode ends when |dx| < 0.01 and |dy| < 0.01, or after ``horizon`` (100) steps. The official
example wraps the environment in rllab's ``normalize()``, which maps a policy action a to the bounds as
``lb + (a + 1) / 2 * (ub - lb) = 0.1 a`` before clipping; :class:`Navigation2D` does the same
(``action_scale=0.1``), so that a unit-variance Gaussian policy explores with steps of about 0.1 instead of
saturating at the bounds. The Gymnasium form takes actions in position units (``action_scale=1``).

Half-cheetah wraps Gymnasium's ``HalfCheetah-v5`` (MuJoCo, 0.05 s per step, 17 observations; the MAML paper's
rllab cheetah stepped 0.01 s with 20 observations, so returns are not directly comparable) and replaces its
reward: goal velocity ``-|v_x - goal| - 0.05 |a|^2`` with goal ~ U[0, 2]; forward/backward
``dir * v_x - 0.05 |a|^2`` with dir = +-1 (probability 1/2 each).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

NAV_GOAL_LOW, NAV_GOAL_HIGH = -0.5, 0.5
NAV_ACTION_BOUND = 0.1
NAV_SUCCESS_TOL = 0.01
CHEETAH_CTRL_COST = 0.05


class Navigation2D:
    """Batched 2D navigation (torch, any device): T tasks (goals) x N trajectories step together.

    Args:
        horizon: maximum episode length (100 in the paper).
        observe_goal: append the goal to the observation (the *oracle* of the paper's Figure 4).
        action_scale: the move is ``clip(action_scale * action, -0.1, 0.1)``; 0.1 is rllab's ``normalize()``
            of the official code, 1.0 takes actions in position units.
    """

    name = "navigation2d"
    act_dim = 2

    def __init__(self, horizon: int = 100, observe_goal: bool = False, action_scale: float = 0.1) -> None:
        if horizon < 1:
            raise ValueError(f"Navigation2D: horizon must be >= 1, got {horizon}")
        if action_scale <= 0:
            raise ValueError(f"Navigation2D: action_scale must be > 0, got {action_scale}")
        self.action_scale = action_scale
        self.horizon = horizon
        self.observe_goal = observe_goal
        self.obs_dim = 4 if observe_goal else 2
        self.task_dim = 2
        self.goals: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None

    def sample_tasks(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n goals [n, 2], uniform in [-0.5, 0.5]^2."""
        return torch.rand(n, 2, generator=generator, dtype=torch.float64) * (NAV_GOAL_HIGH - NAV_GOAL_LOW) \
            + NAV_GOAL_LOW

    def _obs(self) -> torch.Tensor:
        assert self.pos is not None and self.goals is not None
        if not self.observe_goal:
            return self.pos.clone()
        return torch.cat([self.pos, self.goals[:, None, :].expand_as(self.pos)], dim=-1)

    def reset(self, tasks: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Start n trajectories of each task at (0, 0); returns obs [T, n, obs_dim] (float64)."""
        tasks = torch.as_tensor(tasks, dtype=torch.float64)
        if tasks.dim() != 2 or tasks.shape[1] != 2:
            raise ValueError(f"Navigation2D: tasks must be goals [T, 2], got shape {tuple(tasks.shape)}")
        self.goals = tasks
        self.pos = torch.zeros(tasks.shape[0], n, 2, dtype=torch.float64, device=tasks.device)
        return self._obs()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Move by the scaled, clipped actions [T, n, 2]; returns (obs, reward [T, n], done [T, n])."""
        if self.pos is None or self.goals is None:
            raise RuntimeError("Navigation2D: call reset() before step()")
        a = (torch.as_tensor(actions, dtype=torch.float64) * self.action_scale).clamp(-NAV_ACTION_BOUND,
                                                                                       NAV_ACTION_BOUND)
        if a.shape != self.pos.shape:
            raise ValueError(f"Navigation2D: actions must have shape {tuple(self.pos.shape)}, got "
                             f"{tuple(a.shape)}")
        self.pos = self.pos + a
        d = self.pos - self.goals[:, None, :]
        reward = -torch.linalg.vector_norm(d, dim=-1)
        done = (d.abs() < NAV_SUCCESS_TOL).all(dim=-1)
        return self._obs(), reward, done

    def close(self) -> None:
        pass


def _mujoco_env(horizon: int) -> Any:
    try:
        import gymnasium as gym
    except ImportError as e:
        raise ImportError("half-cheetah tasks need Gymnasium with MuJoCo: pip install 'metashot[rl]' "
                          "(gymnasium[mujoco])") from e
    os.environ.setdefault("MUJOCO_GL", "disable")  # headless: never open a window or a GL context
    try:
        return gym.make("HalfCheetah-v5", max_episode_steps=horizon)
    except Exception as e:  # gymnasium raises DependencyNotInstalled (not an ImportError) without mujoco
        raise ImportError(f"half-cheetah tasks need MuJoCo: pip install 'metashot[rl]' ({e})") from e


def cheetah_reward(kind: str, x_velocity: np.ndarray, actions: np.ndarray, task: np.ndarray) -> np.ndarray:
    """The task reward of the paper: ``vel``: -|v - goal| - c|a|^2; ``dir``: dir * v - c|a|^2 (c = 0.05)."""
    ctrl = CHEETAH_CTRL_COST * np.sum(np.square(actions), axis=-1)
    if kind == "vel":
        return -np.abs(x_velocity - task) - ctrl
    if kind == "dir":
        return task * x_velocity - ctrl
    raise ValueError(f"half-cheetah task kind must be 'vel' or 'dir', got {kind!r}")


class HalfCheetahTasks:
    """Batched half-cheetah goal-velocity (``kind="vel"``) or forward/backward (``kind="dir"``) tasks.

    Holds a pool of ``HalfCheetah-v5`` simulators (one per trajectory slot, created on first use and reused)
    stepped in a loop on the CPU; the policy runs batched over all of them. Observations are float64
    [T, N, 17]; the initial-state noise of each simulator is seeded from ``generator``.
    """

    act_dim = 6
    obs_dim = 17
    task_dim = 1

    def __init__(self, kind: str = "vel", horizon: int = 200) -> None:
        if kind not in ("vel", "dir"):
            raise ValueError(f"half-cheetah task kind must be 'vel' or 'dir', got {kind!r}")
        self.kind = kind
        self.name = f"halfcheetah-{kind}"
        self.horizon = horizon
        self._pool: list[Any] = []
        self.tasks: np.ndarray | None = None
        self.shape: tuple[int, int] = (0, 0)

    def sample_tasks(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n tasks [n, 1]: goal velocities U[0, 2] or directions +-1."""
        if self.kind == "vel":
            return torch.rand(n, 1, generator=generator, dtype=torch.float64) * 2.0
        return torch.randint(0, 2, (n, 1), generator=generator).to(torch.float64) * 2 - 1

    def reset(self, tasks: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        tasks = torch.as_tensor(tasks, dtype=torch.float64)
        if tasks.dim() != 2 or tasks.shape[1] != 1:
            raise ValueError(f"HalfCheetahTasks: tasks must be [T, 1], got shape {tuple(tasks.shape)}")
        t = tasks.shape[0]
        while len(self._pool) < t * n:
            self._pool.append(_mujoco_env(self.horizon))
        seeds = torch.randint(0, 2**31 - 1, (t * n,), generator=generator).tolist() if generator is not None \
            else [None] * (t * n)
        obs = [self._pool[i].reset(seed=seeds[i])[0] for i in range(t * n)]
        self.tasks = np.repeat(tasks[:, 0].cpu().numpy(), n)
        self.shape = (t, n)
        return torch.as_tensor(np.stack(obs), dtype=torch.float64).reshape(t, n, -1)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.tasks is None:
            raise RuntimeError("HalfCheetahTasks: call reset() before step()")
        t, n = self.shape
        a = np.asarray(torch.as_tensor(actions).detach().cpu().reshape(t * n, -1), dtype=np.float64)
        low, high = self._pool[0].action_space.low, self._pool[0].action_space.high
        a = np.clip(a, low, high)
        obs, vel = [], np.empty(t * n)
        for i in range(t * n):
            o, _, _, _, info = self._pool[i].step(a[i])
            obs.append(o)
            vel[i] = info["x_velocity"]
        reward = cheetah_reward(self.kind, vel, a, self.tasks)
        done = np.zeros(t * n, dtype=bool)  # the cheetah never falls: episodes run to the horizon
        return (torch.as_tensor(np.stack(obs), dtype=torch.float64).reshape(t, n, -1),
                torch.as_tensor(reward).reshape(t, n), torch.as_tensor(done).reshape(t, n))

    def close(self) -> None:
        for e in self._pool:
            e.close()
        self._pool = []


def make_env(name: str, horizon: int | None = None, **options: Any) -> Navigation2D | HalfCheetahTasks:
    """A batched task distribution by name: ``navigation2d``, ``halfcheetah-vel`` or ``halfcheetah-dir``."""
    if name == "navigation2d":
        return Navigation2D(horizon or 100, **options)
    if name in ("halfcheetah-vel", "halfcheetah-dir"):
        if options:
            raise ValueError(f"{name}: unknown env options {sorted(options)}")
        return HalfCheetahTasks(name.split("-")[1], horizon or 200)
    raise ValueError(f"unknown RL environment {name!r}; choose navigation2d, halfcheetah-vel or "
                     f"halfcheetah-dir")


# --- Gymnasium single-task environments -------------------------------------------------------------------


def _gym() -> Any:
    try:
        import gymnasium as gym
    except ImportError as e:
        raise ImportError("the Gymnasium environments need gymnasium: pip install 'metashot[rl]'") from e
    return gym


def gym_navigation2d(horizon: int = 100, observe_goal: bool = False) -> Any:
    """A Gymnasium ``Env`` of one 2D-navigation task; ``reset(options={"task": (gx, gy)})`` sets the goal,
    otherwise a goal is drawn from the reset's seed. Same dynamics as :class:`Navigation2D` (tested)."""
    gym = _gym()

    class Navigation2DEnv(gym.Env):
        metadata = {"render_modes": []}

        def __init__(self) -> None:
            self._batched = Navigation2D(horizon, observe_goal, action_scale=1.0)
            dim = self._batched.obs_dim
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float64)
            self.action_space = gym.spaces.Box(-NAV_ACTION_BOUND, NAV_ACTION_BOUND, (2,), np.float64)
            self._t = 0

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            super().reset(seed=seed)
            task = (options or {}).get("task")
            if task is None:
                task = self.np_random.uniform(NAV_GOAL_LOW, NAV_GOAL_HIGH, size=2)
            self.goal = np.asarray(task, dtype=np.float64)
            self._t = 0
            obs = self._batched.reset(torch.as_tensor(self.goal)[None], 1)
            return obs[0, 0].numpy(), {"goal": self.goal.copy()}

        def step(self, action: Any) -> Any:
            obs, r, done = self._batched.step(torch.as_tensor(np.asarray(action, np.float64))[None, None])
            self._t += 1
            return (obs[0, 0].numpy(), float(r[0, 0]), bool(done[0, 0]), self._t >= horizon,
                    {"goal": self.goal.copy()})

    return Navigation2DEnv()


def gym_halfcheetah(kind: str = "vel", horizon: int = 200) -> Any:
    """A Gymnasium wrapper of ``HalfCheetah-v5`` with the goal-velocity or direction reward of one task;
    ``reset(options={"task": goal_or_dir})`` sets it (default: drawn from the reset's seed)."""
    gym = _gym()
    if kind not in ("vel", "dir"):
        raise ValueError(f"half-cheetah task kind must be 'vel' or 'dir', got {kind!r}")

    class HalfCheetahTaskEnv(gym.Wrapper):
        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            opts = dict(options or {})
            task = opts.pop("task", None)
            obs, info = self.env.reset(seed=seed, options=opts or None)
            if task is None:
                task = (self.np_random.uniform(0.0, 2.0) if kind == "vel"
                        else self.np_random.choice([-1.0, 1.0]))
            self.task = float(task)
            return obs, {**info, "task": self.task}

        def step(self, action: Any) -> Any:
            obs, _, term, trunc, info = self.env.step(action)
            a = np.clip(np.asarray(action, np.float64), self.action_space.low, self.action_space.high)
            r = float(cheetah_reward(kind, np.asarray(info["x_velocity"]), a, np.asarray(self.task)))
            return obs, r, term, trunc, {**info, "task": self.task}

    return HalfCheetahTaskEnv(_mujoco_env(horizon))
