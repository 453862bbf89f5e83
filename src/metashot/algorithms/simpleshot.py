"""SimpleShot: nearest class mean on normalised features, and the few-shot heads over the same features."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metashot.algorithms.base import Batch, BatchedEpisodesMixin, MetaLearner, register
from metashot.algorithms.heads import Head, cosine, make_head, prototypes
from metashot.nn.feature_maps import CENTRES, batch_centre, centre_map, l2n, task_features


@register("simpleshot")
class SimpleShot(BatchedEpisodesMixin, MetaLearner):
    """SimpleShot (Wang, Chao, Weinberger & van der Maaten, arXiv:1911.04623, 2019).

    A query is assigned to the nearest class mean of transformed embeddings,
    y(x) = argmin_k || t(f(x)) - c_k ||^2,  c_k = 1/|S_k| sum_{x_i in S_k} t(f(x_i)),
    where t is the paper's CL2N map: centre, then L2-normalise. The paper centres on the mean feature of the
    base (training) classes; a backbone can do that itself (``TimmBackbone(centre=True)``).
    ``centre="support"`` centres on the mean of the task's own L2-normalised support embeddings instead,
    t(z) = n(n(z) - 1/|S| sum_{x_i in S} n(f(x_i))),  n(v) = v / ||v||,
    which needs no base classes, so it suits a photo domain unlike the base classes (it uses the support set
    only). ``centre="none"`` is the paper's L2N. The maps live in :mod:`metashot.nn.feature_maps`.

    ``head`` replaces the nearest-class-mean rule by another head of :mod:`metashot.algorithms.heads` over
    the same mapped features, e.g. a transductive one (``soft_kmeans``, ``bd_cspn``, ``tim``, ``alpha_tim``,
    ``pt_map``, ``laplacianshot``, ``transductive_finetune``) that also uses the unlabelled queries: then the
    predictor treats the items of each call as one unlabelled batch, so a query's answer can depend on the
    other queries of the same call. A call with a single item, or ``transductive=False``, uses the inductive
    rule (nearest class mean).

    Args:
        backbone: embedding network f, [B, *item] -> [B, D]; usually a frozen pretrained network.
        centre: ``support`` or ``none``.
        l2norm: L2-normalise (the paper's L2N); False with ``centre="none"`` is plain nearest class mean.
        temperature: the nearest-class-mean scores are ``-temperature * d^2``; it changes no prediction, only
            how sharp ``predict_proba`` is (calibration).
        head, head_args: the head over the mapped features (default ``ncm``, the rule above).
        transductive: use the head's transductive rule when it has one (False: nearest class mean).
        unknown_threshold: the "none of these" threshold on :meth:`HeadPredictor.known_scores` (the cosine
            of a query to its nearest prototype), chosen on validation classes; None: not set.
    """

    def __init__(self, backbone: nn.Module, centre: str = "support", l2norm: bool = True,
                 temperature: float = 1.0, head: str = "ncm", head_args: dict[str, Any] | None = None,
                 transductive: bool = True, unknown_threshold: float | None = None) -> None:
        super().__init__()
        if centre not in CENTRES:
            raise ValueError(f"SimpleShot: centre must be 'support' or 'none', got {centre!r}")
        if centre == "support" and not l2norm:
            raise ValueError("SimpleShot: centre='support' centres L2-normalised embeddings; "
                             "set l2norm: true")
        self.backbone = backbone
        self.centre = centre
        self.l2norm = bool(l2norm)
        if not temperature > 0:
            raise ValueError(f"SimpleShot: temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.head_name, self.head_args = head, dict(head_args or {})
        if head == "ncm":
            self.head_args.setdefault("scale", self.temperature)
        self.head: Head = make_head(head, **self.head_args)
        self.inductive_head: Head = make_head("ncm", scale=self.temperature)
        self.transductive = bool(transductive)
        self.unknown_threshold = None if unknown_threshold is None else float(unknown_threshold)

    @property
    def uses_queries(self) -> bool:
        """True when predictions use the unlabelled batch (a transductive head, switched on)."""
        return self.transductive and self.head.transductive

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, D] of items x [B, *item] (L2-normalised when ``l2norm``)."""
        z = self.backbone(x).flatten(1)
        return F.normalize(z, dim=-1) if self.l2norm else z

    def scores(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int,
               transductive: bool | None = None) -> torch.Tensor:
        """Query scores [T, M, N] of tasks of embeddings zs [T, S, D], ys [T, S], zq [T, M, D]."""
        ts, tq = task_features(zs, zq, self.centre)
        assert tq is not None
        use = self.uses_queries if transductive is None else (transductive and self.head.transductive)
        head = self.head if (use and zq.shape[-2] > 1) or not self.head.transductive else self.inductive_head
        return head(ts, ys, tq, ways)

    def known_scores(self, zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        """How much each query looks like a support class, [T, M]: the cosine of its embedding to the
        nearest class mean, both centred on the mean of the support set and the query batch together
        (:func:`~metashot.nn.feature_maps.batch_centre`) and L2-normalised. Centring on the batch was chosen
        on validation classes over centring on the support set alone, no centring, the top-2 gap and the
        softmax maximum (AUROC of known vs unknown queries, Lite0 + Lite1 at 160 px, 1 / 5 shots: 0.889 /
        0.963 vs 0.840 / 0.938 on mini-ImageNet val, 0.875 / 0.949 vs 0.808 / 0.906 on Flowers-102 val;
        results/photos/known_score_val.jsonl, benchmarks/photos/known_score_variants.py). It makes one photo's
        score depend a little on the others of the call (with one query it is close to support centring);
        the class predictions do not use it."""
        m = batch_centre(zs, zq)
        return cosine(centre_map(zq, m), prototypes(centre_map(zs, m), ys, ways)).amax(-1)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor,
              query_x: torch.Tensor | None = None) -> HeadPredictor:
        """support_x [S, *item], support_y [S] (0..N-1) -> predictor(query_x [M, *item]) -> scores [M, N].

        ``query_x``: the unlabelled batch the predictor will be asked about, if known now; its embedding is
        kept, so calling the predictor on that same tensor does not embed it again.
        """
        pred = self.adapt_embedded(self.embed(support_x), support_y)
        if query_x is not None:
            pred.remember(query_x, self.embed(query_x))
        return pred

    def adapt_embedded(self, zs: torch.Tensor, ys: torch.Tensor) -> HeadPredictor:
        """A predictor from support embeddings zs [S, D] (from :meth:`embed`) and labels ys [S]."""
        return HeadPredictor(self, zs, ys)

    def batched_logits(self, batch: Batch) -> torch.Tensor:
        zs, zq = self.embed_episodes(self.embed, batch)
        return self.scores(zs, batch.support_y, zq, batch.ways)

    def config_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"centre": self.centre, "l2norm": self.l2norm, "temperature": self.temperature}
        if self.head_name != "ncm" or self.unknown_threshold is not None or not self.transductive:
            head_args = dict(self.head_args)
            if self.head_name == "ncm" and head_args.get("scale") == self.temperature:
                head_args.pop("scale")
            out.update(head=self.head_name, head_args=head_args, transductive=self.transductive,
                       unknown_threshold=self.unknown_threshold)
        return out


class HeadPredictor:
    """What :meth:`SimpleShot.adapt` returns: the support embeddings and the rule to score queries.

    ``predictor(x)`` embeds x [M, *item] and scores it [M, N], x being one unlabelled batch for a
    transductive head. :meth:`classify` gives the scores and the known-class scores in one pass. A small
    plain object (picklable with its learner).
    """

    def __init__(self, learner: SimpleShot, zs: torch.Tensor, ys: torch.Tensor) -> None:
        self.learner, self.zs, self.ys = learner, zs, ys
        self.ways = int(ys.max()) + 1
        self._remembered: tuple[torch.Tensor, torch.Tensor] | None = None

    def remember(self, x: torch.Tensor, z: torch.Tensor) -> None:
        self._remembered = (x, z)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self._remembered is not None and self._remembered[0] is x:
            return self._remembered[1]
        return self.learner.embed(x)

    def scores_embedded(self, zq: torch.Tensor, transductive: bool | None = None,
                        unknown_threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [M, N], known scores [M]) of query embeddings zq [M, D].

        With ``unknown_threshold``, queries whose known score is below it are left out of the transductive
        batch (so photos of no support class cannot pull the prototypes) and scored by the inductive rule.
        """
        zs, ys = self.zs[None], self.ys[None]
        known = self.learner.known_scores(zs, ys, zq[None], self.ways)[0]
        if unknown_threshold is None:
            return self.learner.scores(zs, ys, zq[None], self.ways, transductive)[0], known
        keep = known >= unknown_threshold
        out = self.learner.scores(zs, ys, zq[None], self.ways, transductive=False)[0]
        if bool(keep.any()):
            out[keep] = self.learner.scores(zs, ys, zq[keep][None], self.ways, transductive)[0].to(out.dtype)
        return out, known

    def classify(self, x: torch.Tensor, transductive: bool | None = None,
                 unknown_threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [M, N], known scores [M]) of items x [M, *item]; see :meth:`scores_embedded`."""
        return self.scores_embedded(self.embed(x), transductive, unknown_threshold)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)[0]


__all__ = ["HeadPredictor", "SimpleShot", "l2n"]
