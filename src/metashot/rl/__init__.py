"""Meta-reinforcement learning: MAML-TRPO (Finn et al. 2017, section 5.3) on 2D navigation and half-cheetah.

One short module per piece: :mod:`metashot.rl.policy` (the Gaussian MLP policy and its distribution),
:mod:`metashot.rl.rollout` (sampling, returns, the linear baseline), :mod:`metashot.rl.adaptation` (the inner
loop and the meta-objective), :mod:`metashot.rl.curvature` (Fisher-vector products through the inner loop) and
:mod:`metashot.rl.trpo` (conjugate gradient, TRPO); :mod:`metashot.rl.envs` (the task distributions) and
:mod:`metashot.rl.train` (configs, training, evaluation, checkpoints).
"""

from metashot.rl.adaptation import adapt, meta_objective
from metashot.rl.envs import HalfCheetahTasks, Navigation2D, make_env
from metashot.rl.evaluation import evaluate_adaptation
from metashot.rl.policy import GaussianMLPPolicy
from metashot.rl.rollout import rollout
from metashot.rl.train import RLConfig, load_policy, load_rl_config, train_rl
from metashot.rl.trpo import conjugate_gradient, trpo_step

__all__ = ["GaussianMLPPolicy", "HalfCheetahTasks", "Navigation2D", "RLConfig", "adapt", "conjugate_gradient",
           "evaluate_adaptation", "load_policy", "load_rl_config", "make_env", "meta_objective", "rollout",
           "train_rl", "trpo_step"]
