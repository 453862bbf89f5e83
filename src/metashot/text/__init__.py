"""Few-shot text classification: sentence encoders, the embedding cache, baselines and out-of-scope rejection.

Every metashot algorithm runs on text by working on cached sentence embeddings (float32 [M, 384] stores);
see :mod:`metashot.data.text` for the datasets and splits.
"""

from metashot.text.encoder import DEFAULT_ENCODER, HashingEncoder, MiniLMEncoder, TextEncoder, get_encoder

__all__ = ["DEFAULT_ENCODER", "HashingEncoder", "MiniLMEncoder", "TextEncoder", "get_encoder"]
