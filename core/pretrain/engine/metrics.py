"""Running a set of metrics (the ``metric`` kind): build, feed batches, reduce across ranks, merge results.

Every metric keeps its states on the evaluation device; :func:`reduce_states`
combines each state across processes once (``sum``/``max``/``min`` with an
all-reduce, ``cat`` with an all-gather of variable length). Each rank scores a
disjoint shard of the data (the loaders do not pad evaluation shards), so summed
counts are exactly the single-process counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from pretrain.assembly.assemble import build_node
from pretrain.components import BaseMetric, MetricContext, MetricInputs
from pretrain.engine.distributed import DistInfo
from pretrain.spec.context import ComponentNode

__all__ = ["MetricSet", "MetricsReport", "gather_rows", "reduce_states"]


@dataclass
class MetricsReport:
    """The merged results of a metric set.

    Attributes:
        scalars: Every named number (``accuracy/top1``, ``retrieval/Recall@1``...).
        values: Other JSON values (classwise lists).
        per_class: Column -> one value per class (``accuracy``, ``precision``...).
        artefacts: Tensors (``confusion_matrix``).

    """

    scalars: dict[str, float] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    per_class: dict[str, list[float | None]] = field(default_factory=dict)
    artefacts: dict[str, Tensor] = field(default_factory=dict)


def gather_rows(local: Tensor, info: DistInfo | None) -> list[Tensor]:
    """Every rank's ``local`` (any length; same trailing shape), in rank order (identity alone).

    A rank without rows may hold an empty tensor of any trailing shape (of the same rank):
    it takes the shape of the ranks that have rows.
    """
    if info is None or not info.distributed:
        return [local]
    shape = torch.tensor(list(local.shape), device=info.device)  # (ndim,)
    shapes = [torch.zeros_like(shape) for _ in range(info.world_size)]
    dist.all_gather(shapes, shape)
    rows = [int(s[0]) for s in shapes]
    trailing = next((tuple(int(d) for d in s[1:]) for s in shapes if int(s[0]) > 0), tuple(local.shape[1:]))
    padded = local.new_zeros(max(rows), *trailing)
    if local.shape[0]:
        padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded.contiguous())
    return [p[:n] for p, n in zip(parts, rows, strict=True)]


_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def reduce_states(metric: BaseMetric, info: DistInfo | None) -> None:
    """Combine ``metric``'s states across processes, in place (a no-op in one process)."""
    if info is None or not info.distributed:
        return
    for name in sorted(metric.states):  # the same order on every rank
        value, how = metric.states[name], metric.reductions[name]
        if how == "cat":
            metric.states[name] = torch.cat(gather_rows(value.to(info.device), info)).to(value.device)
            continue
        reduced = value.to(info.device).clone()
        dist.all_reduce(reduced, op=getattr(dist.ReduceOp, _OPS[how]))
        metric.states[name] = reduced.to(value.device)


class MetricSet:
    """Metrics built from validated nodes, fed batch by batch, computed once.

    Args:
        nodes: Validated metric tables (``eval.metrics`` or the task's defaults).
        context: Classes, k values and device of this evaluation.

    """

    def __init__(self, nodes: Sequence[ComponentNode], context: MetricContext) -> None:
        self.metrics: list[BaseMetric] = [build_node(node) for node in nodes]
        for metric in self.metrics:
            metric.reset(context)

    def update(self, inputs: MetricInputs) -> None:
        """Feed one batch to every metric."""
        for metric in self.metrics:
            metric.update(inputs)

    def compute(self, info: DistInfo | None = None) -> MetricsReport:
        """Reduce across ranks (a collective: every rank calls it) and merge the results."""
        report = MetricsReport()
        for metric in self.metrics:
            reduce_states(metric, info)
            result = metric.compute()
            report.scalars.update(result.scalars)
            report.values.update(result.values)
            for column, values in result.per_class.items():
                report.per_class.setdefault(column, values)
            report.artefacts.update(result.artefacts)
        return report
