"""Contract of the ``metric`` kind, and the similarity search that retrieval and kNN share.

Import these from :mod:`pretrain.components`, their documented home (this private
module keeps that file short).

A metric accumulates **states** (tensors on the evaluation device) batch by batch.
Each state declares how it combines across processes (``sum``, ``max``, ``min`` or
``cat``); the engine reduces every state across ranks exactly once, then calls
:meth:`BaseMetric.compute`. A metric never talks to ``torch.distributed`` itself,
so a metric whose states are counts is exact under DDP by construction.

The search (:func:`search_topk`) scores a chunk of queries against the whole
gallery at a time, so memory is bounded by ``chunk x gallery`` scores, never by
``queries x gallery x features``; ties are broken towards the lower gallery index,
so the ranking does not depend on the chunk size or on the number of processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.errors import PretrainError

__all__ = [
    "BaseMetric",
    "MetricContext",
    "MetricInputs",
    "MetricResult",
    "Reduce",
    "Similarity",
    "ranked_topk",
    "search_topk",
    "similarity_scores",
]

#: How a metric state combines across processes.
Reduce = Literal["sum", "max", "min", "cat"]

#: Similarity of two embeddings (larger = more similar); ``euclidean`` is the negated distance.
Similarity = Literal["cosine", "dot", "euclidean"]

#: Scores per query chunk (4 Mi float32 = 16 MiB) when no chunk size is given.
_SCORE_BUDGET = 1 << 22


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class MetricContext:
    """What a metric learns about the evaluation before the first batch.

    Attributes:
        num_classes: Classes of the evaluated labels (None for retrieval with an
            index-labelled gallery).
        topk: The evaluation's k values (``eval.topk``), for metrics whose own
            ``topk`` is unset.
        device: Where the states live (the model's device: no host sync per batch).
        classes: Class names (label ``i`` is ``classes[i]``), possibly empty.

    """

    num_classes: int | None
    topk: tuple[int, ...]
    device: torch.device
    classes: tuple[str, ...] = ()


@dataclass
class MetricInputs:
    """One batch as the evaluation hands it to metrics; fields a task does not produce are None.

    Attributes:
        scores: Classification: class scores (N, C).
        labels: Classification: class indices (N,).
        relevance: Retrieval: (N, K) bool, whether the k-th ranked gallery item
            matches the query (best first; K is the largest k evaluated, or the
            gallery size if smaller).
        num_relevant: Retrieval: (N,) matching items in the whole gallery.

    """

    scores: Tensor | None = None
    labels: Tensor | None = None
    relevance: Tensor | None = None
    num_relevant: Tensor | None = None


@dataclass
class MetricResult:
    """What :meth:`BaseMetric.compute` returns.

    Attributes:
        scalars: Named numbers (``accuracy/top1``), reported everywhere (metrics.jsonl,
            ``pretrain eval``, usable as ``train.best_metric``).
        values: Other JSON values (``single-label/precision_classwise`` lists).
        per_class: Column name -> one value per class (None where undefined), shown
            in the per-class table of ``pretrain eval``.
        artefacts: Tensors such as ``confusion_matrix`` (C, C); ``pretrain eval --json``
            writes them as nested lists and a run plots the confusion matrix.

    """

    scalars: dict[str, float] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    per_class: dict[str, list[float | None]] = field(default_factory=dict)
    artefacts: dict[str, Tensor] = field(default_factory=dict)


class BaseMetric:
    """Metric contract (kind ``metric``, entry-point group ``pretrain.metrics``).

    Lifecycle, driven by the engine for every evaluation::

        metric.reset(context)          # init_states(): add_state(...) for each state
        for batch: metric.update(MetricInputs(...))    # on the device, no host sync
        # the engine reduces every state across ranks (sum / max / min / cat)
        result = metric.compute()      # MetricResult: named scalars, lists, artefacts

    ``task`` says which evaluation feeds the metric: ``classification`` (``scores``
    and ``labels``) or ``retrieval`` (``relevance`` and ``num_relevant``).
    :meth:`metric_names` lists the scalar names a configuration reports, without
    building it, so ``train.best_metric`` is checked when the spec is validated.

    Example::

        class ErrorRate(BaseMetric):
            '''Top-1 error in percent.'''

            def init_states(self, context):
                self.add_state("wrong", torch.zeros((), dtype=torch.long, device=context.device))
                self.add_state("total", torch.zeros((), dtype=torch.long, device=context.device))

            def update(self, inputs):
                self.states["wrong"] += (inputs.scores.argmax(1) != inputs.labels).sum()
                self.states["total"] += inputs.labels.numel()

            def compute(self):
                wrong, total = int(self.states["wrong"]), int(self.states["total"])
                return MetricResult(scalars={"error/top1": 100.0 * wrong / max(total, 1)})

            @classmethod
            def metric_names(cls, params, topk):
                return ["error/top1"]
    """

    component_kind: ClassVar[str] = "metric"
    #: Which evaluation feeds this metric.
    task: ClassVar[Literal["classification", "retrieval"]] = "classification"

    def __init__(self) -> None:
        self.states: dict[str, Tensor] = {}
        self.reductions: dict[str, Reduce] = {}
        self.context: MetricContext | None = None

    # ------------------------------------------------------------------ engine side

    def reset(self, context: MetricContext) -> None:
        """Forget earlier batches and allocate the states for a new evaluation."""
        self.states, self.reductions, self.context = {}, {}, context
        self.init_states(context)

    def add_state(self, name: str, value: Tensor, reduce: Reduce = "sum") -> None:
        """Declare a state and how it combines across processes.

        ``sum``/``max``/``min`` states must have the same shape on every rank; a ``cat``
        state is concatenated along dim 0 (rank order), so it may differ in length.
        """
        if reduce not in ("sum", "max", "min", "cat"):
            raise ValueError(f"reduce must be sum, max, min or cat, got {reduce!r}")
        self.states[name] = value
        self.reductions[name] = reduce

    # ------------------------------------------------------------------ author side

    def init_states(self, context: MetricContext) -> None:
        """Allocate the states with :meth:`add_state` (called by :meth:`reset`)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def update(self, inputs: MetricInputs) -> None:
        """Add one batch to the states (stay on the device: no ``.item()``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def compute(self) -> MetricResult:
        """The result from the (already reduced) states."""
        raise NotImplementedError  # pragma: no cover - abstract

    @classmethod
    def metric_names(cls, params: Mapping[str, Any], topk: Sequence[int]) -> list[str]:
        """Scalar names a configuration reports (``params``: its validated fields)."""
        return []

    def require(self, inputs: MetricInputs, *names: str) -> list[Tensor]:
        """The named fields of ``inputs``; a clear error when the evaluation did not supply one."""
        out = []
        for name in names:
            value = getattr(inputs, name)
            if value is None:
                raise PretrainError(
                    f"{type(self).__name__} needs {name!r}, which a {self.task} evaluation "
                    "supplies but this one did not",
                    hint=f"Use {type(self).__name__} only with models it scores ({self.task}).",
                )
            out.append(value)
        return out


# --------------------------------------------------------------------------- search


def similarity_scores(query: Tensor, gallery: Tensor, similarity: Similarity) -> Tensor:
    """Scores (N, M) of queries (N, D) against gallery items (M, D); larger = more similar.

    ``cosine`` expects nothing (both sides are L2-normalised here); ``euclidean`` is the
    negated distance.
    """
    if similarity == "cosine":
        return F.normalize(query, dim=1) @ F.normalize(gallery, dim=1).T  # (N, M)
    if similarity == "dot":
        return query @ gallery.T  # (N, M)
    if similarity == "euclidean":
        return -torch.cdist(query, gallery)  # (N, M)
    raise PretrainError(f"unknown similarity {similarity!r}", hint="Use cosine, dot or euclidean.")


def ranked_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best columns of each row, best first; equal scores rank the lower index first.

    Args:
        scores: (N, M) similarities.
        k: How many to keep; more than M keeps M.

    Returns:
        ``(values, indices)``, both (N, min(k, M)).

    """
    n, m = scores.shape
    k = min(k, m)
    if k <= 0 or n == 0:
        return scores.new_zeros(n, max(k, 0)), torch.zeros(n, max(k, 0), dtype=torch.long, device=scores.device)
    kth = scores.topk(k, dim=1).values[:, -1:]  # (N, 1): the k-th best value of each row
    above = scores > kth  # (N, M)
    tied = scores == kth  # (N, M)
    need = k - above.sum(1, keepdim=True)  # (N, 1) ties to take, lowest index first
    take = above | (tied & (tied.cumsum(1, dtype=torch.int32) <= need))  # exactly k per row
    index = take.nonzero()[:, 1].view(n, k)  # (N, k), ascending gallery index
    values = scores.gather(1, index)
    order = values.argsort(dim=1, descending=True, stable=True)  # ties keep ascending index
    return values.gather(1, order), index.gather(1, order)


def search_topk(
    query: Tensor, gallery: Tensor, k: int, similarity: Similarity, *, chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact top-k gallery items of every query, ``chunk_size`` queries at a time.

    Args:
        query: (N, D) query embeddings.
        gallery: (M, D) gallery embeddings.
        k: Items per query (more than M keeps M).
        similarity: ``cosine``, ``dot`` or ``euclidean``.
        chunk_size: Queries scored at once (default: as many as fit 4 Mi scores).

    Returns:
        ``(scores, indices)``, both (N, min(k, M)), best first.

    Raises:
        PretrainError: Query and gallery widths differ.

    """
    if query.shape[0] == 0:  # e.g. a rank whose shard is empty: nothing to rank
        width = min(k, gallery.shape[0])
        return gallery.new_zeros(0, width), torch.zeros(0, width, dtype=torch.long, device=gallery.device)
    if query.shape[1] != gallery.shape[1]:
        raise PretrainError(
            f"query embeddings have {query.shape[1]} features but the gallery's have {gallery.shape[1]}",
            hint="Encode gallery and queries with the same model (a saved gallery must come from "
            "this model's `pretrain embed`).",
        )
    if similarity == "cosine":  # normalise once instead of once per chunk
        query, gallery, similarity = F.normalize(query, dim=1), F.normalize(gallery, dim=1), "dot"
    chunk = chunk_size or max(1, _SCORE_BUDGET // max(gallery.shape[0], 1))
    values, indices = [], []
    for start in range(0, query.shape[0], chunk):
        scores = similarity_scores(query[start : start + chunk], gallery, similarity)  # (chunk, M)
        v, i = ranked_topk(scores, k)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)
