"""Few-shot text classification: sentence encoders, the embedding cache and out-of-scope rejection.

Every metashot algorithm (also the text baselines ``ncm`` and ``logreg``, in :mod:`metashot.algorithms`) runs
on text by working on cached sentence embeddings (float32 [M, 384] stores); see :mod:`metashot.data.text` for
the datasets and splits.
"""

from metashot.text.encoder import DEFAULT_ENCODER, HashingEncoder, MiniLMEncoder, TextEncoder, get_encoder

__all__ = ["DEFAULT_ENCODER", "HashingEncoder", "MiniLMEncoder", "TextEncoder", "get_encoder"]
