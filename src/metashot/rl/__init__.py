"""Meta-reinforcement learning: MAML-TRPO (Finn et al. 2017, section 5.3) on 2D navigation and half-cheetah.

See :mod:`metashot.rl.core` (policy, sampling, baseline, inner loop, TRPO), :mod:`metashot.rl.envs` (the task
distributions) and :mod:`metashot.rl.train` (configs, training, evaluation, checkpoints).
"""

from metashot.rl.core import GaussianMLPPolicy, adapt, conjugate_gradient, meta_objective, rollout, trpo_step
from metashot.rl.envs import HalfCheetahTasks, Navigation2D, make_env
from metashot.rl.train import RLConfig, evaluate_adaptation, load_policy, load_rl_config, train_rl

__all__ = ["GaussianMLPPolicy", "HalfCheetahTasks", "Navigation2D", "RLConfig", "adapt", "conjugate_gradient",
           "evaluate_adaptation", "load_policy", "load_rl_config", "make_env", "meta_objective", "rollout",
           "train_rl", "trpo_step"]
