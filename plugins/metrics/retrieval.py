"""Retrieval metrics: ``RetrievalRecall`` (``retrieval/Recall@K``), ``RetrievalAveragePrecision`` (``mAP@K``).

Provenance: MMPretrain ``evaluation/metrics/retrieval.py`` (same names, keys and
formulas). The engine ranks the gallery for every query and hands the metrics the
relevance of the ranked items (``relevance`` (N, K) bool, best first) and the number
of matching items in the whole gallery (``num_relevant`` (N,)), whether the gallery
is class-labelled (a match = same class) or index-labelled (each query lists its
matching gallery items, InShop style).

Differences from MMPretrain: both metrics keep per-query sums that are added up
across processes, so multi-GPU results cover every query (MMPretrain's mAP averages
rank 0's share only); ``topk`` may be a list for mAP too; a K larger than the
gallery means the whole gallery (MMPretrain's ``topk`` fails there); a query with
no match anywhere in the gallery scores 0 for both (MMPretrain divides by zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseMetric, MetricContext, MetricInputs, MetricResult

__all__ = ["RetrievalAveragePrecision", "RetrievalRecall", "average_precision"]

PositiveInt = Annotated[int, Field(gt=0)]


def _ks(own: Any, default: Sequence[int]) -> tuple[int, ...]:
    if own is None:
        return tuple(default)
    return tuple(own) if isinstance(own, list | tuple) else (int(own),)


def _relevance(metric: BaseMetric, inputs: MetricInputs) -> tuple[Tensor, Tensor]:
    relevance, num_relevant = metric.require(inputs, "relevance", "num_relevant")
    return relevance.bool(), num_relevant.long()


def average_precision(relevance: Tensor, num_relevant: Tensor, mode: Literal["IR", "integrate"] = "IR") -> Tensor:
    """Average precision (percent) of each query's ranked list.

    Args:
        relevance: (N, K) bool, whether the item at rank r (0-based, best first) matches.
        num_relevant: (N,) matching items in the whole gallery: the denominator, as in
            MMPretrain (so AP@K < 100 when fewer than all matches fit in the top K).
        mode: ``IR``: the mean of precision@rank over matching ranks; ``integrate``:
            the trapezoid rule between consecutive precisions (Oxford/Paris buildings).

    Returns:
        (N,) float64; 0 for a query without any match.

    """
    rel = relevance.to(torch.float64)  # (N, K)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64, device=rel.device)  # (K,) 1-based
    hits = rel.cumsum(dim=1)  # (N, K) matches up to and including each rank
    precision = hits / ranks  # (N, K)
    if mode == "integrate":
        # Previous precision (i / r with i matches before this one at 0-based rank r), 1 at rank 0.
        before = (hits - 1) / (ranks - 1).clamp(min=1)
        before[:, 0] = 1.0
        precision = (before + precision) / 2
    total = (precision * rel).sum(dim=1)  # (N,)
    return 100.0 * total / num_relevant.to(torch.float64).clamp(min=1)


class RetrievalRecall(BaseMetric):
    """Recall@K in percent: the share of queries with at least one match among their top K.

    (The "hit rate" of metric-learning papers, as MMPretrain defines it.) Keys:
    ``retrieval/Recall@{k}``.

    Args:
        topk: The K values; default: ``eval.topk``.

    """

    task: ClassVar[Literal["classification", "retrieval"]] = "retrieval"
    example_config: ClassVar[dict[str, Any]] = {"topk": [1, 5]}

    def __init__(self, *, topk: PositiveInt | list[PositiveInt] | None = None) -> None:
        super().__init__()
        self.topk = None if topk is None else _ks(topk, ())

    @classmethod
    def metric_names(cls, params: Mapping[str, Any], topk: Sequence[int]) -> list[str]:
        """``retrieval/Recall@{k}`` per k."""
        return [f"retrieval/Recall@{k}" for k in _ks(params.get("topk"), topk)]

    def init_states(self, context: MetricContext) -> None:
        """Hits per K and the number of queries."""
        self.ks = self.topk or context.topk
        self.add_state("hits", torch.zeros(len(self.ks), dtype=torch.long, device=context.device))
        self.add_state("queries", torch.zeros((), dtype=torch.long, device=context.device))

    def update(self, inputs: MetricInputs) -> None:
        """Count the queries of one batch with a match in their top K."""
        relevance, _ = _relevance(self, inputs)
        for i, k in enumerate(self.ks):
            self.states["hits"][i] += relevance[:, :k].any(dim=1).sum()
        self.states["queries"] += relevance.shape[0]

    def compute(self) -> MetricResult:
        """Percentages from the reduced counts."""
        n = int(self.states["queries"])
        hits = self.states["hits"].tolist()
        return MetricResult(scalars={f"retrieval/Recall@{k}": 100.0 * h / n if n else 0.0
                                     for k, h in zip(self.ks, hits, strict=True)})


class RetrievalAveragePrecision(BaseMetric):
    """mAP@K in percent: the mean over queries of the average precision of their top K.

    A query's AP@K sums the precision at each matching rank within the top K and
    divides by its number of matches in the whole gallery. Keys: ``retrieval/mAP@{k}``.

    Args:
        topk: The K values; default: ``eval.topk``.
        mode: ``IR`` (information retrieval AP) or ``integrate`` (trapezoid rule over
            the precision-recall curve, the Oxford/Paris buildings convention).

    """

    task: ClassVar[Literal["classification", "retrieval"]] = "retrieval"
    example_config: ClassVar[dict[str, Any]] = {"topk": 10}

    def __init__(
        self, *, topk: PositiveInt | list[PositiveInt] | None = None, mode: Literal["IR", "integrate"] = "IR",
    ) -> None:
        super().__init__()
        self.topk = None if topk is None else _ks(topk, ())
        self.mode = mode

    @classmethod
    def metric_names(cls, params: Mapping[str, Any], topk: Sequence[int]) -> list[str]:
        """``retrieval/mAP@{k}`` per k."""
        return [f"retrieval/mAP@{k}" for k in _ks(params.get("topk"), topk)]

    def init_states(self, context: MetricContext) -> None:
        """The sum of per-query AP per K (float64) and the number of queries."""
        self.ks = self.topk or context.topk
        self.add_state("ap_sum", torch.zeros(len(self.ks), dtype=torch.float64, device=context.device))
        self.add_state("queries", torch.zeros((), dtype=torch.long, device=context.device))

    def update(self, inputs: MetricInputs) -> None:
        """Add the AP@K of the queries of one batch."""
        relevance, num_relevant = _relevance(self, inputs)
        for i, k in enumerate(self.ks):
            self.states["ap_sum"][i] += average_precision(relevance[:, :k], num_relevant, self.mode).sum()
        self.states["queries"] += relevance.shape[0]

    def compute(self) -> MetricResult:
        """Means from the reduced sums."""
        n = int(self.states["queries"])
        sums = self.states["ap_sum"].tolist()
        return MetricResult(scalars={f"retrieval/mAP@{k}": s / n if n else 0.0
                                     for k, s in zip(self.ks, sums, strict=True)})
