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
    """Every rank's ``local`` (same trailing shape, any length), in rank order (identity alone)."""
    if info is None or not info.distributed:
        return [local]
    size = torch.tensor([local.shape[0]], device=info.device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = local.new_zeros(longest, *local.shape[1:])
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded.contiguous())
    return [p[: int(n)] for p, n in zip(parts, sizes, strict=True)]


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
