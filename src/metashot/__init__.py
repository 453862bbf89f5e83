"""metashot: meta-learning and few-shot learning for PyTorch.

Every algorithm is one mapping ``learner.adapt(support_x, support_y) -> predictor``; see DESIGN in the docs.
"""

from metashot.classifier import FewShotClassifier, load
from metashot.config import Config, load_config
from metashot.data import ClassStore, EpisodeBatch, EpisodeSampler, load_split
from metashot.evaluate import evaluate

__version__ = "0.1.0"
__all__ = ["ClassStore", "Config", "EpisodeBatch", "EpisodeSampler", "FewShotClassifier", "evaluate", "load",
           "load_config", "load_split", "__version__"]
