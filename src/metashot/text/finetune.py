"""Episodic fine-tuning of the top transformer layers of all-MiniLM-L6-v2 on a K-shot support set.

The encoder's bottom ``6 - n_top`` layers stay frozen and run once per sentence: their token-level hidden
states (with the attention mask, i.e. each sentence's length) are cached on disk like the embedding stores.
Only the top ``n_top`` layers (a copy, so the shared encoder is never modified) run forward and backward. The
sentence vector is unchanged from :class:`~metashot.text.encoder.MiniLMEncoder`: attention-masked mean of the
last hidden states, L2-normalised, so with zero fine-tuning steps the embeddings are the frozen encoder's (a
test checks this).

Training signal: the ProtoNet loss (Snell et al. 2017) with cosine logits, on episodes drawn from the support
set alone. Each step samples ``ways`` classes; per class its shots are shuffled, ``K - queries`` of them form
the prototype and ``queries`` are classified against all the episode's prototypes, ``s * cos(z, c_k)``.

Hyper-parameters are chosen without any sentence outside the support set: :func:`select_on_heldout` holds
out ``holdout`` shots per class, fine-tunes on the rest and scores nearest-prototype accuracy on the held-out
shots at several step counts.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metashot.data.store import ClassStore, cached_store
from metashot.nn.prototypes import class_sums

NUM_LAYERS = 6  # all-MiniLM-L6-v2


class TokenBank:
    """Ragged token states of n sentences: ``flat`` float32 [T, D], sentence i = rows offsets[i]:offsets[i+1].

    ``batch(idx)`` pads a subset to [B, L, D] with the attention mask [B, L] (1 = token, 0 = padding).
    """

    def __init__(self, flat: torch.Tensor, offsets: np.ndarray) -> None:
        self.flat = torch.as_tensor(flat, dtype=torch.float32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.diff(self.offsets)
        if self.offsets[0] != 0 or self.offsets[-1] != self.flat.shape[0] or np.any(self.lengths <= 0):
            raise ValueError("TokenBank: offsets must split the token rows into non-empty sentences")

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def dim(self) -> int:
        return int(self.flat.shape[1])

    def batch(self, idx: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        lens = self.lengths[idx]
        L = int(lens.max())
        hidden = torch.zeros(len(idx), L, self.dim)
        mask = torch.zeros(len(idx), L, dtype=torch.long)
        for j, (i, n) in enumerate(zip(idx, lens, strict=True)):
            hidden[j, :n] = self.flat[self.offsets[i] : self.offsets[i] + n]
            mask[j, :n] = 1
        return hidden, mask


def bottom_states(encoder: Any, texts: Sequence[str], n_top: int, batch_size: int = 64) -> TokenBank:
    """Hidden states after the frozen bottom ``6 - n_top`` layers of a :class:`MiniLMEncoder`'s model.

    Same tokenisation as ``encoder.encode`` (truncation at ``encoder.max_length``); batches of similar length.
    """
    from metashot.text.encoder import check_texts

    texts = check_texts(texts)
    n_top = _check_n_top(n_top)
    order = np.argsort([len(t) for t in texts], kind="stable")
    per: list[torch.Tensor | None] = [None] * len(texts)
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            tok = encoder.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                    max_length=encoder.max_length, return_tensors="pt").to(encoder.device)
            out = encoder.model(**tok, output_hidden_states=True)
            h = out.hidden_states[NUM_LAYERS - n_top].float().cpu()  # [B, L, D]; index 0 = embeddings
            lens = tok["attention_mask"].sum(1).tolist()
            for b, (j, n) in enumerate(zip(idx, lens, strict=True)):
                per[j] = h[b, : int(n)].clone()
    lengths = np.array([p.shape[0] for p in per], dtype=np.int64)  # type: ignore[union-attr]
    return TokenBank(torch.cat(per), np.concatenate([[0], np.cumsum(lengths)]))  # type: ignore[arg-type]


def _check_n_top(n_top: int) -> int:
    if not 1 <= int(n_top) <= NUM_LAYERS:
        raise ValueError(f"n_top must be in 1..{NUM_LAYERS} (layers of all-MiniLM-L6-v2), got {n_top}")
    return int(n_top)


def part_token_bank(dataset: str, part: str, n_top: int, rows: Sequence[int] | None = None,
                    tag: str | None = None, root: str | Path | None = None,
                    cache_dir: Path | None = None, encoder: Any = None) -> TokenBank:
    """Cached bottom-layer token states of one text part (optionally only ``rows`` of it).

    Sentences are in the order of the part's embedding store (classes sorted by name, file order within), so
    row i of the bank is row i of ``embed_part(dataset, part, rows=rows)``. Cached as a store whose "classes"
    are the sentences and whose rows are tokens.
    """
    from metashot.data.text import group_by_label, part_sources, read_part
    from metashot.text.encoder import DEFAULT_ENCODER, encoder_fingerprint, get_encoder

    n_top = _check_n_top(n_top)
    pairs = read_part(dataset, part, root)
    if rows is not None:
        rows = [int(r) for r in rows]
        pairs = [pairs[r] for r in rows]
    texts, _, _ = group_by_label(pairs)
    key = {"kind": "text-token-states", "encoder": encoder_fingerprint(DEFAULT_ENCODER), "dataset": dataset,
           "part": part, "rows": rows, "layer": NUM_LAYERS - n_top, "n": len(texts)}

    def build() -> tuple[np.ndarray, list[int], list[str]]:
        bank = bottom_states(encoder if encoder is not None else get_encoder(DEFAULT_ENCODER), texts, n_top)
        return bank.flat.numpy(), bank.lengths.tolist(), [str(i) for i in range(len(texts))]

    store = cached_store(f"text-{dataset}-{tag or part}-tokens-L{NUM_LAYERS - n_top}",
                         part_sources(dataset, root), key, build, meta={"dataset": dataset, "part": part},
                         cache_dir=cache_dir)
    return TokenBank(torch.as_tensor(np.asarray(store.images)), store.offsets)


class TopLayers(nn.Module):
    """A trainable copy of the top ``n_top`` layers of a BERT-style model, then mean pooling and L2 norm.

    forward(hidden [B, L, D], mask [B, L]) -> unit sentence vectors [B, D].
    """

    def __init__(self, model: nn.Module, n_top: int) -> None:
        super().__init__()
        n_top = _check_n_top(n_top)
        self.layers = nn.ModuleList(copy.deepcopy(list(model.encoder.layer)[-n_top:]))
        self.config = model.config
        for p in self.parameters():
            p.requires_grad_(True)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        attn = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in self.layers:
            hidden = layer(hidden, attn)
            if isinstance(hidden, tuple):  # older transformers return (hidden,)
                hidden = hidden[0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(mean, dim=-1)


def embed(top: TopLayers, bank: TokenBank, batch_size: int = 128) -> torch.Tensor:
    """Sentence vectors [n, D] of every sentence of ``bank`` (eval mode, no grad, batched by length)."""
    was = top.training
    top.eval()
    out = torch.empty(len(bank), bank.dim)
    order = np.argsort(bank.lengths, kind="stable")
    with torch.inference_mode():
        for i in range(0, len(bank), batch_size):
            idx = order[i : i + batch_size]
            out[torch.from_numpy(idx)] = top(*bank.batch(idx)).float()
    top.train(was)
    return out


def class_rows(labels: np.ndarray) -> list[np.ndarray]:
    """Row indices of each class 0..C-1."""
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]


def episode_loss(top: TopLayers, bank: TokenBank, rows: list[np.ndarray], rng: np.random.Generator,
                 ways: int, queries: int, temperature: float) -> torch.Tensor:
    """ProtoNet loss of one episode drawn from ``rows`` (per-class row indices into ``bank``)."""
    classes = rng.permutation(len(rows))[: min(ways, len(rows))]
    sup, qry = [], []
    for c in classes:
        r = rng.permutation(rows[c])
        q = min(queries, len(r) - 1)
        sup.append(r[: len(r) - q])
        qry.append(r[len(r) - q :])
    idx = np.concatenate(sup + qry)
    z = top(*bank.batch(idx))
    ns = sum(len(s) for s in sup)
    zs, zq = z[:ns], z[ns:]
    sy = torch.from_numpy(np.concatenate([np.full(len(s), k) for k, s in enumerate(sup)]))
    qy = torch.from_numpy(np.concatenate([np.full(len(q), k) for k, q in enumerate(qry)]))
    # The prototype rule of protonet.class_sums, summed in row order (index_add_), which training depends on
    # to the last bit; the matrix product there adds in another order.
    protos = torch.zeros(len(classes), zs.shape[1]).index_add_(0, sy, zs)
    protos = F.normalize(protos, dim=-1)
    return F.cross_entropy(temperature * zq @ protos.T, qy)


def finetune(top: TopLayers, bank: TokenBank, labels: np.ndarray, steps: int, lr: float = 5e-5,
             ways: int = 32, queries: int = 2, temperature: float = 10.0, weight_decay: float = 0.01,
             seed: int = 0, warmup: int = 10,
             callback: Callable[[int, TopLayers], None] | None = None) -> list[float]:
    """Fine-tune ``top`` in place for ``steps`` episodes of the support set (``bank`` rows with ``labels``).

    AdamW with a linear warm-up over the first ``warmup`` steps, then a constant rate (so the model after s
    steps does not depend on the total, and one run scores every step count); dropout active while training.
    ``callback(step, top)`` is called before the first step (step 0) and after every step. Returns the
    per-step losses.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = class_rows(labels)
    if min(len(r) for r in rows) < 2:
        raise ValueError("episodic fine-tuning needs at least 2 shots per class (prototype + query)")
    params = [p for p in top.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    losses: list[float] = []
    if callback:
        callback(0, top)
    top.train()
    for step in range(1, steps + 1):
        loss = episode_loss(top, bank, rows, rng, ways, queries, temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if callback:
            callback(step, top)
            top.train()
    top.eval()
    return losses


def nearest_prototype_acc(zs: torch.Tensor, ys: np.ndarray, zq: torch.Tensor, yq: np.ndarray) -> float:
    """Accuracy of cosine nearest class mean (classes 0..C-1 from ``ys``)."""
    ways = int(ys.max()) + 1
    sums, _ = class_sums(zs, torch.as_tensor(ys, dtype=torch.long), ways, "nearest_prototype_acc")
    protos = F.normalize(sums, dim=-1)
    return float(((zq @ protos.T).argmax(1).numpy() == yq).mean())


def select_on_heldout(model: nn.Module, bank: TokenBank, labels: np.ndarray, n_top: int, lrs: Sequence[float],
                      checkpoints: Sequence[int], holdout: int = 1, folds: int = 1, seed: int = 0,
                      **kw: Any) -> list[dict[str, Any]]:
    """Score (lr, steps) using only the support set: hold out ``holdout`` shots per class, ``folds`` times.

    Each class's shots are shuffled once; fold f holds out shots f*holdout..(f+1)*holdout-1 of that order (the
    folds' held-out shots are disjoint). For each fold and lr, fine-tune a fresh copy of the top layers on the
    remaining shots for ``max(checkpoints)`` steps and record the nearest-prototype accuracy (prototypes =
    remaining shots) on the held-out shots at every step in ``checkpoints``. Returns one record per (lr,
    steps): ``heldout_acc`` = mean over folds (``fold_accs`` each fold's).
    """
    rng = np.random.default_rng(seed + 7919)
    perms = [rng.permutation(r) for r in class_rows(labels)]
    if min(len(p) for p in perms) < folds * holdout + 2:
        raise ValueError(f"{folds} folds of {holdout} held-out shots leave fewer than 2 shots in some class")
    marks = sorted(set(int(c) for c in checkpoints))
    accs: dict[tuple[float, int], list[float]] = {}
    secs: dict[tuple[float, int], float] = {}
    for f in range(folds):
        lo, hi = f * holdout, (f + 1) * holdout
        held_i = np.concatenate([p[lo:hi] for p in perms])
        keep_i = np.concatenate([np.concatenate([p[:lo], p[hi:]]) for p in perms])
        y_keep, y_held = np.asarray(labels)[keep_i], np.asarray(labels)[held_i]
        sub_keep, sub_held = _sub_bank(bank, keep_i), _sub_bank(bank, held_i)
        for lr in lrs:
            t0 = time.perf_counter()

            def score(step: int, m: TopLayers, lr: float = lr, t0: float = t0,
                      d: tuple = (sub_keep, y_keep, sub_held, y_held)) -> None:
                if step in marks:
                    acc = nearest_prototype_acc(embed(m, d[0]), d[1], embed(m, d[2]), d[3])
                    accs.setdefault((lr, step), []).append(100 * acc)
                    secs[(lr, step)] = secs.get((lr, step), 0.0) + time.perf_counter() - t0

            finetune(TopLayers(model, n_top), sub_keep, y_keep, marks[-1], lr=lr, seed=seed, callback=score,
                     **kw)
    return [{"lr": lr, "steps": step, "heldout_acc": round(float(np.mean(accs[(lr, step)])), 2),
             "fold_accs": [round(a, 2) for a in accs[(lr, step)]], "seconds": round(secs[(lr, step)], 1)}
            for lr in lrs for step in marks]


def _sub_bank(bank: TokenBank, idx: np.ndarray) -> TokenBank:
    parts = [bank.flat[bank.offsets[i] : bank.offsets[i + 1]] for i in idx]
    lengths = bank.lengths[idx]
    return TokenBank(torch.cat(parts), np.concatenate([[0], np.cumsum(lengths)]))


def to_store(z: torch.Tensor, like: ClassStore) -> ClassStore:
    """Embeddings [n, D] in ``like``'s row order as a feature store with ``like``'s classes."""
    return ClassStore(z, like.offsets, list(like.class_names), dict(like.meta))
