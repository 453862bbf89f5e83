"""Few-shot heads (metashot.algorithms.heads): each update against a float64 computation written out by hand
(loops over classes and queries, not the heads' batched algebra), and the properties every head keeps."""

from __future__ import annotations

import math

import pytest
import torch

from metashot.algorithms.heads import available_heads, make_head
from metashot.algorithms.heads.feat import FEAT, SetAttention, load_set_attention, save_set_attention
from metashot.algorithms.heads.laplacianshot import knn_affinity
from metashot.algorithms.heads.pt_map import sinkhorn
from metashot.algorithms.heads.tim import shannon, tsallis

HEADS = ["ncm", "finetune", "transductive_finetune", "soft_kmeans", "bd_cspn", "laplacianshot", "pt_map",
         "tim", "alpha_tim", "feat"]


def task(seed: int = 0, ways: int = 3, shots: int = 2, queries: int = 4, dim: int = 6,
         spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One task of float64 features around ``ways`` random centres: zs [1, S, D], ys [1, S], zq [1, M, D],
    yq [1, M] (``queries`` per class)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(ways, dim, generator=g, dtype=torch.float64)
    ys = torch.arange(ways).repeat_interleave(shots)
    yq = torch.arange(ways).repeat_interleave(queries)
    zs = centres[ys] + spread * torch.randn(len(ys), dim, generator=g, dtype=torch.float64)
    zq = centres[yq] + spread * torch.randn(len(yq), dim, generator=g, dtype=torch.float64)
    return zs[None], ys[None], zq[None], yq[None]


def means(zs: torch.Tensor, ys: torch.Tensor, ways: int) -> list[torch.Tensor]:
    return [zs[ys == k].mean(0) for k in range(ways)]


def sqd(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum())


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_every_head_is_registered_and_tested() -> None:
    assert set(HEADS) <= set(available_heads())
    with pytest.raises(ValueError, match="unknown head 'nope'"):
        make_head("nope")
    with pytest.raises(ValueError, match="bad arguments"):
        make_head("soft_kmeans", stepz=3)


def test_ncm_is_scaled_squared_distance_to_class_means() -> None:
    zs, ys, zq, _ = task()
    out = make_head("ncm", scale=7.0)(zs, ys, zq, 3)[0]
    m = means(zs[0], ys[0], 3)
    for j in range(zq.shape[1]):
        for k in range(3):
            assert out[j, k].item() == pytest.approx(-7.0 * sqd(zq[0, j], m[k]), rel=1e-12)


def test_soft_kmeans_one_step_by_hand() -> None:
    zs, ys, zq, _ = task(1)
    s = 2.0
    out = make_head("soft_kmeans", steps=1, scale=s)(zs, ys, zq, 3)[0]
    m = means(zs[0], ys[0], 3)
    new = []
    for k in range(3):
        num = zs[0][ys[0] == k].sum(0).clone()
        den = float((ys[0] == k).sum())
        for j in range(zq.shape[1]):
            logits = [-s * sqd(zq[0, j], m[c]) for c in range(3)]
            w = math.exp(logits[k]) / sum(math.exp(v) for v in logits)
            num += w * zq[0, j]
            den += w
        new.append(num / den)
    for j in range(zq.shape[1]):
        for k in range(3):
            assert out[j, k].item() == pytest.approx(-s * sqd(zq[0, j], new[k]), rel=1e-10)


def test_bd_cspn_by_hand() -> None:
    zs, ys, zq, _ = task(2)
    eps, s = 10.0, 3.0
    out = make_head("bd_cspn", eps=eps, scale=s)(zs, ys, zq, 3)[0]
    q = zq[0] + (zs[0].mean(0) - zq[0].mean(0))  # the cross-class shift
    m = means(zs[0], ys[0], 3)
    pseudo = [max(range(3), key=lambda k: cos(q[j], m[k])) for j in range(len(q))]
    rect = []
    for k in range(3):
        members = [zs[0, i] for i in range(zs.shape[1]) if ys[0, i] == k]
        members += [q[j] for j in range(len(q)) if pseudo[j] == k]
        w = [math.exp(eps * cos(x, m[k])) for x in members]
        rect.append(sum(wi * x for wi, x in zip(w, members, strict=True)) / sum(w))
    for j in range(len(q)):
        for k in range(3):
            assert out[j, k].item() == pytest.approx(s * cos(q[j], rect[k]), rel=1e-10)


def test_sinkhorn_marginals_and_pt_map_one_step_by_hand() -> None:
    zs, ys, zq, _ = task(3)
    M, N = zq.shape[1], 3
    cost = torch.cdist(zq[0], torch.stack(means(zs[0], ys[0], N))) ** 2
    p = sinkhorn(cost[None], 0.5, torch.full((1, N), M / N, dtype=torch.float64), 200)[0]
    assert torch.allclose(p.sum(1), torch.ones(M, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(p.sum(0), torch.full((N,), M / N, dtype=torch.float64), atol=1e-6)
    # one outer step with alpha = 1: centres = (support sum + plan-weighted queries) / (count + plan mass)
    head = make_head("pt_map", lam=0.5, alpha=1.0, steps=1, sinkhorn_iters=200)
    out = head(zs, ys, zq, N)[0]
    c = []
    for k in range(N):
        num = zs[0][ys[0] == k].sum(0) + sum(p[j, k] * zq[0, j] for j in range(M))
        c.append(num / (float((ys[0] == k).sum()) + float(p[:, k].sum())))
    cost2 = torch.stack([torch.stack([((zq[0, j] - c[k]) ** 2).sum() for k in range(N)]) for j in range(M)])
    p2 = sinkhorn(cost2[None], 0.5, torch.full((1, N), M / N, dtype=torch.float64), 200)[0]
    assert torch.allclose(out, torch.log(p2.clamp_min(1e-30)), atol=1e-8)


def test_laplacianshot_by_hand() -> None:
    zs, ys, zq, _ = task(4)
    lam, s = 0.5, 2.0
    head = make_head("laplacianshot", lam=lam, knn=2, scale=s, steps=1, shift=False)
    out = head(zs, ys, zq, 3)[0]
    m = means(zs[0], ys[0], 3)
    M = zq.shape[1]
    a = torch.tensor([[s * sqd(zq[0, j], m[k]) for k in range(3)] for j in range(M)], dtype=torch.float64)
    w = torch.zeros(M, M, dtype=torch.float64)
    for j in range(M):
        d = sorted((sqd(zq[0, j], zq[0, l]), l) for l in range(M) if l != j)
        for _, l in d[:2]:
            w[j, l] = 1.0
    assert torch.equal(knn_affinity(zq, 2)[0], w)
    y0 = torch.softmax(-a, 1)
    y1 = torch.softmax(-a + lam * w @ y0, 1)
    assert torch.allclose(out, torch.log(y1), atol=1e-12)
    # lam = 0 is the inductive rule
    plain = make_head("laplacianshot", lam=0.0, shift=False, scale=s)(zs, ys, zq, 3)[0]
    assert torch.equal(plain.argmax(1), (-a).argmax(1))


def test_tim_loss_by_hand() -> None:
    zs, ys, zq, _ = task(5)
    head = make_head("tim", lam=0.3, cond=0.2, marg=0.9, tau=4.0)
    w = torch.stack(means(zs[0], ys[0], 3))[None] + 0.1
    ls, lq = head.logits(zs, w), head.logits(zq, w)
    got = head.loss(ls, ys, lq).item()

    def probs(z: torch.Tensor) -> list[list[float]]:
        rows = []
        for x in z:
            e = [math.exp(-4.0 / 2 * sqd(x, w[0, k])) for k in range(3)]
            rows.append([v / sum(e) for v in e])
        return rows

    ps, pq = probs(zs[0]), probs(zq[0])
    ce = -sum(math.log(ps[i][int(ys[0, i])]) for i in range(len(ps))) / len(ps)
    marg = [sum(p[k] for p in pq) / len(pq) for k in range(3)]
    h_marg = -sum(v * math.log(v) for v in marg)
    h_cond = sum(-sum(v * math.log(v) for v in p) for p in pq) / len(pq)
    assert got == pytest.approx(0.3 * ce - 0.9 * h_marg + 0.2 * h_cond, rel=1e-9)


def test_alpha_entropies() -> None:
    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    assert tsallis(p, 2.0).item() == pytest.approx(1 - (0.25 + 0.09 + 0.04), rel=1e-12)
    assert tsallis(p, 1.0 + 1e-7).item() == pytest.approx(shannon(p).item(), rel=1e-5)
    head = make_head("alpha_tim", alpha=2.0)
    assert head.alpha == 2.0 and head.entropy(p).item() == pytest.approx(0.62, rel=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        make_head("alpha_tim", alpha=1.0)


def test_finetune_losses_by_hand() -> None:
    zs, ys, zq, _ = task(6)
    ind, tr = make_head("finetune", scale=5.0), make_head("transductive_finetune", scale=5.0, ent=0.5)
    w = torch.stack(means(zs[0], ys[0], 3))[None]
    ls, lq = ind.logits(zs, w), ind.logits(zq, w)
    assert ls[0, 1, 2].item() == pytest.approx(5.0 * cos(zs[0, 1], w[0, 2]), rel=1e-12)
    ce = torch.nn.functional.cross_entropy(ls[0], ys[0]).item()
    ent = float(sum(-(p * p.log()).sum() for p in lq[0].softmax(-1)) / lq.shape[1])
    assert ind.loss(ls, ys, None).item() == pytest.approx(ce, rel=1e-12)
    assert tr.loss(ls, ys, lq).item() == pytest.approx(ce + 0.5 * ent, rel=1e-9)  # log(p + 1e-12)


@pytest.mark.parametrize("name", HEADS)
def test_head_properties(name: str) -> None:
    """Shapes, finite scores, query order does not change any answer, tasks of a batch are independent,
    and on well separated classes every head is right."""
    head = make_head(name)
    zs, ys, zq, yq = task(7, spread=0.2)
    out = head(zs.float(), ys, zq.float(), 3)
    assert out.shape == (1, zq.shape[1], 3) and bool(torch.isfinite(out).all())
    assert bool((out.argmax(-1) == yq).all())
    perm = torch.randperm(zq.shape[1], generator=torch.Generator().manual_seed(0))
    out_p = head(zs.float(), ys, zq[:, perm].float(), 3)
    assert torch.equal(out_p.argmax(-1), out.argmax(-1)[:, perm])
    assert torch.allclose(out_p, out[:, perm], atol=1e-4, rtol=1e-4)
    zs2, ys2, zq2, _ = task(8, spread=0.2)
    both = head(torch.cat([zs, zs2]).float(), torch.cat([ys, ys2]), torch.cat([zq, zq2]).float(), 3)
    alone = head(zs2.float(), ys2, zq2.float(), 3)
    assert torch.allclose(both[1], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", HEADS)
def test_head_edge_batches(name: str) -> None:
    """One query, queries of a single class, a class with no query: finite, right where classes separate."""
    head = make_head(name)
    zs, ys, zq, yq = task(9, spread=0.2)
    one = head(zs.float(), ys, zq[:, :1].float(), 3)
    assert one.shape == (1, 1, 3) and bool(torch.isfinite(one).all())
    only0 = head(zs.float(), ys, zq[:, yq[0] == 0].float(), 3)
    assert bool(torch.isfinite(only0).all())
    missing = zq[:, yq[0] != 2].float()
    out = head(zs.float(), ys, missing, 3)
    assert bool(torch.isfinite(out).all())
    if name not in ("pt_map",):  # PT-MAP's balanced-class constraint forces mass onto the absent class
        assert bool((out.argmax(-1) == yq[:, yq[0] != 2]).all())


def trained_layer(dim: int = 6, seed: int = 3) -> SetAttention:
    """A FEAT layer with random (non-zero) output weights, as if trained."""
    layer = SetAttention(dim, key_dim=4, rank=3, seed=seed).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        layer.w_o.copy_(torch.randn(3, dim, generator=g, dtype=torch.float64))
    return layer


def test_feat_untrained_is_nearest_class_mean() -> None:
    zs, ys, zq, _ = task()
    feat, ncm = make_head("feat", scale=7.0), make_head("ncm", scale=7.0)
    assert torch.equal(feat(zs, ys, zq, 3), ncm(zs, ys, zq, 3))
    assert not make_head("feat").transductive and make_head("feat", steps=2).transductive


def test_feat_set_attention_by_hand() -> None:
    """p'_k = p_k + sum_l a_kl (p_l W_v) W_o, a_k. = softmax_l((p_k W_q) . (p_l W_k) / sqrt(d_k))."""
    zs, ys, zq, _ = task()
    head = FEAT(scale=7.0)
    head.layer = layer = trained_layer()
    out = head(zs, ys, zq, 3)[0]
    m = means(zs[0], ys[0], 3)
    wq, wk, wv, wo = (t.detach() for t in (layer.w_q, layer.w_k, layer.w_v, layer.w_o))
    adapted = []
    for k in range(3):
        e = [float((m[k] @ wq) @ (m[j] @ wk)) / math.sqrt(4) for j in range(3)]
        a = [math.exp(x - max(e)) for x in e]
        a = [x / sum(a) for x in a]
        adapted.append(m[k] + sum(a[j] * ((m[j] @ wv) @ wo) for j in range(3)))
    for j in range(zq.shape[1]):
        for k in range(3):
            assert out[j, k].item() == pytest.approx(-7.0 * sqd(zq[0, j], adapted[k]), rel=1e-10)


def test_feat_refinement_keeps_the_adaptation_by_hand() -> None:
    """steps=1: soft k-means means from the adapted prototypes, plus the adaptation p'_k - p_k."""
    zs, ys, zq, _ = task()
    head = FEAT(scale=7.0, steps=1)
    head.layer = layer = trained_layer()
    out = head(zs, ys, zq, 3)[0]
    m = torch.stack(means(zs[0], ys[0], 3))
    p1 = layer(m[None])[0].detach()
    w = torch.stack([torch.tensor([-7.0 * sqd(q, p1[k]) for k in range(3)]).softmax(0) for q in zq[0]])
    refined = []
    for k in range(3):
        s = zs[0][ys[0] == k].sum(0) + sum(w[j, k] * zq[0, j] for j in range(zq.shape[1]))
        refined.append(s / (int((ys[0] == k).sum()) + float(w[:, k].sum())) + (p1[k] - m[k]))
    for j in range(zq.shape[1]):
        for k in range(3):
            assert out[j, k].item() == pytest.approx(-7.0 * sqd(zq[0, j], refined[k]), rel=1e-8)


def test_feat_weights_file_round_trip_and_errors(tmp_path) -> None:
    layer = trained_layer().float()
    path = tmp_path / "feat.safetensors"
    save_set_attention(layer, path, {"models": "x"})
    loaded = load_set_attention(path)
    assert all(torch.equal(loaded.state_dict()[k], layer.state_dict()[k]) for k in layer.state_dict())
    zs, ys, zq, _ = task()
    head = make_head("feat", weights=str(path))
    ref = FEAT()
    ref.layer = layer
    assert torch.equal(head(zs.float(), ys, zq.float(), 3), ref(zs.float(), ys, zq.float(), 3))
    with pytest.raises(ValueError, match="8 wide"):
        head(torch.zeros(1, 3, 8), ys[:, :3], torch.zeros(1, 2, 8), 3)
    with pytest.raises(ValueError, match="no such FEAT weights file"):
        load_set_attention(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        load_set_attention(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a FEAT layer"):
        load_set_attention(tmp_path / "other.safetensors")
    bad = trained_layer().float().state_dict()
    bad["w_o"][0, 0] = float("nan")
    save_file(bad, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        load_set_attention(tmp_path / "nan.safetensors")
