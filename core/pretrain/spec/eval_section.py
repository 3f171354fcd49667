"""The ``[eval]`` spec table: top-k, metrics (a component kind), kNN and the search (torch-free).

A spec's eval table, in full::

    [eval]
    topk = [1, 5]              # accuracy/top{k}; retrievers: retrieval/Recall@{k}, mAP@{k}
    per_class = true
    knn = { k = 20, temperature = 0.07 }      # knn/top1, knn/top5 on the model's features
    search = { type = "exact" }               # or { type = "faiss", index = "HNSW32" }
    metrics = [{ type = "Accuracy" }, { type = "SingleLabelMetric", average = "micro" }]

Unset ``metrics`` means the defaults of the model's task (:data:`DEFAULT_METRICS`);
:func:`known_metrics` lists every scalar an evaluation will report, which is what
``train.best_metric`` is checked against (in :func:`pretrain.spec.sections.check_against_model`).
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from pretrain.errors import PretrainError
from pretrain.spec.context import ComponentNode, ValidationContext

__all__ = [
    "DEFAULT_METRICS",
    "EvalSection",
    "ExactSearch",
    "FaissSearch",
    "KNNConfig",
    "SearchConfig",
    "Task",
    "check_eval_section",
    "effective_topk",
    "eval_json_schema",
    "known_metrics",
    "metric_nodes",
    "retrieval_topk",
]

#: Sanity bound of every k (far above real use; `topk = [1e9]` fails validation).
MAX_TOPK = 100_000

PositiveFloat = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KNNConfig(_Strict):
    """``[eval] knn``: weighted k-nearest-neighbour classification on frozen features.

    The InstDisc/DINO protocol: L2-normalised features; the ``k`` most similar gallery
    items vote for their class with weight exp(cosine / temperature). Reported as
    ``knn/top{k}`` for each k of ``topk`` (those above the class count are left out).
    """

    k: Annotated[int, Field(gt=0, le=MAX_TOPK)] = Field(default=20, description="Neighbours that vote.")
    temperature: PositiveFloat = Field(default=0.07, description="Softness of the vote weights exp(sim / T).")
    topk: tuple[Annotated[int, Field(gt=0, le=MAX_TOPK)], ...] = Field(
        default=(1, 5), min_length=1, max_length=16, description="Report knn/top{k} (percent) for each k."
    )


class ExactSearch(_Strict):
    """Exact search: every query against the whole gallery, a chunk of queries at a time."""

    type: Literal["exact"]
    chunk_size: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Queries scored at once (default: as many as fit 4 Mi scores)."
    )


class FaissSearch(_Strict):
    """Approximate search with faiss (``pip install 'pretrain[faiss]'``), for very large galleries."""

    type: Literal["faiss"]
    index: str = Field(
        default="HNSW32", min_length=1,
        description="A faiss index_factory string, e.g. HNSW32, IVF1024,Flat or IVF4096,PQ32.",
    )
    params: dict[str, float] = Field(
        default_factory=dict, description="faiss search parameters, e.g. {nprobe = 32} or {efSearch = 128}."
    )


SearchConfig = Annotated[ExactSearch | FaissSearch, Field(discriminator="type")]

#: What an evaluation scores: class predictions, a ranked gallery, or a pretext loss.
Task = Literal["classification", "retrieval", "selfsup"]

#: The metrics of each task when ``eval.metrics`` is unset (built-ins, by qualified name).
DEFAULT_METRICS: dict[str, tuple[dict[str, Any], ...]] = {
    "classification": ({"type": "pretrain:Accuracy"}, {"type": "pretrain:SingleLabelMetric"},
                       {"type": "pretrain:ConfusionMatrix"}),
    "retrieval": ({"type": "pretrain:RetrievalRecall"}, {"type": "pretrain:RetrievalAveragePrecision"}),
    "selfsup": (),
}


class EvalSection(_Strict):
    """The ``[eval]`` table: how validation and ``pretrain eval`` score a model."""

    topk: tuple[Annotated[int, Field(gt=0, le=MAX_TOPK)], ...] = Field(
        default=(1, 5), min_length=1, max_length=16,
        description="The k of accuracy/top{k} (classifiers) and of retrieval/Recall@{k} and mAP@{k} "
        "(retrievers). Unset: (1, 5), without the k larger than the model's class count (or the "
        "retriever's topk); an explicit k above it is an error.",
    )
    per_class: bool = Field(default=True, description="Also report per-class accuracy, precision, recall and F1.")
    metrics: list[dict[str, Any]] | None = Field(
        default=None,
        description="Metric tables (pretrain.metrics components). Default: Accuracy, SingleLabelMetric and "
        "ConfusionMatrix for classifiers, RetrievalRecall and RetrievalAveragePrecision for retrievers.",
    )
    knn: KNNConfig | None = Field(
        default=None,
        description="Weighted kNN on the model's features (knn/top1, knn/top5), against data.gallery, "
        "else the training set through the validation pipeline.",
    )
    search: SearchConfig = Field(
        default_factory=lambda: ExactSearch(type="exact"),
        description="How retrieval and kNN find the nearest gallery items: exact (default) or faiss.",
    )
    _metric_nodes: tuple[ComponentNode, ...] | None = PrivateAttr(default=None)


def check_eval_section(section: EvalSection, ctx: ValidationContext) -> None:
    """Validate ``eval.metrics`` as metric components; faiss must be importable when asked for."""
    if section.metrics is not None:
        section._metric_nodes = tuple(ctx.components("metric", list(section.metrics), "eval.metrics"))
    if isinstance(section.search, FaissSearch) and importlib.util.find_spec("faiss") is None:
        ctx.add("eval.search.type", "'faiss' needs the faiss package, which is not installed; "
                "install the extra with pip install 'pretrain[faiss]' (faiss-cpu), or use "
                'type = "exact"')


def metric_nodes(section: EvalSection | None, task: Task, ctx: ValidationContext | None = None) -> list[ComponentNode]:
    """The metrics an evaluation of ``task`` computes: ``eval.metrics``, else the task's defaults.

    Raises:
        PretrainError: A default metric cannot be resolved (only without ``ctx``).

    """
    if section is not None and section._metric_nodes is not None:
        return list(section._metric_nodes)
    own = ctx or ValidationContext()
    nodes = own.components("metric", [dict(t) for t in DEFAULT_METRICS[task]], "eval.metrics")
    if ctx is None and own.issues:
        raise PretrainError(f"the default {task} metrics are not available: {own.issues[0]}",
                            hint="Reinstall pretrain (its entry points register the built-in metrics).")
    return nodes


def retrieval_topk(section: EvalSection, model_topk: int | None) -> tuple[int, ...]:
    """The K of ``retrieval/Recall@K`` and ``mAP@K``: as given, or (1, 5) without K > the retriever's topk."""
    if "topk" in section.model_fields_set or model_topk is None:
        return section.topk
    return tuple(k for k in section.topk if k <= model_topk) or (model_topk,)


def known_metrics(
    section: EvalSection | None, *, task: Task, num_classes: int | None, model_topk: int | None = None,
    ctx: ValidationContext | None = None,
) -> list[str]:
    """Every scalar an evaluation reports (the legal ``train.best_metric`` values), in report order."""
    section = section or EvalSection()
    if task == "retrieval":
        topk = retrieval_topk(section, model_topk)
    else:
        topk = effective_topk(section, num_classes) if num_classes is not None else section.topk
    names: list[str] = []
    for node in metric_nodes(section, task, ctx):
        names_of = getattr(node.cls, "metric_names", None)
        if callable(names_of):
            names += list(names_of(node.params, topk))
    if section.knn is not None:
        names += [f"knn/top{k}" for k in section.knn.topk]
    # Only models without dataset classes report a validation loss.
    return [*dict.fromkeys(names), *(["val_loss"] if task == "selfsup" else [])]


def effective_topk(section: EvalSection, num_classes: int) -> tuple[int, ...]:
    """The k of ``accuracy/top{k}``: as given, or the default (1, 5) without k > ``num_classes``."""
    if "topk" in section.model_fields_set:
        return section.topk
    return tuple(k for k in section.topk if k <= num_classes) or (1,)


def eval_json_schema() -> dict[str, Any]:
    """JSON Schema of the ``[eval]`` table; ``metrics`` items refer to ``#/$defs/metric``."""
    schema = EvalSection.model_json_schema()
    prop = schema["properties"]["metrics"]
    schema["properties"]["metrics"] = {
        "anyOf": [{"type": "array", "items": {"$ref": "#/$defs/metric"}}, {"type": "null"}],
        "default": None, "description": prop.get("description", ""),
    }
    return schema
