"""Classification metrics as running counts: top-k accuracy (percent) and per-class accuracy.

Everything is a sum of per-sample indicators, so a multi-process evaluation
all-reduces a few count vectors. Each rank scores a disjoint shard of the
validation set (no sampler padding), so nothing is counted twice.
Ties are broken by ``torch.topk``, as in MMPretrain's ``Accuracy`` with ``thrs=0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pretrain.engine.distributed import DistInfo, all_reduce_sum
from pretrain.errors import PretrainError

__all__ = ["AccuracyMeter"]


class AccuracyMeter:
    """Accumulates top-k hits and per-class hits over batches.

    Args:
        topk: The k values to report (``accuracy/top{k}``).
        num_classes: Number of classes (scores have this many columns).
        device: Where the counters live (the model's device: no host syncs per batch).

    """

    def __init__(self, topk: Sequence[int], num_classes: int, device: torch.device) -> None:
        bad = [k for k in topk if k > num_classes]
        if bad:
            raise PretrainError(
                f"eval.topk asks for top-{max(bad)} accuracy but the model has only "
                f"{num_classes} classes",
                hint=f"set eval.topk to values <= {num_classes}, e.g. [1]",
            )
        self.topk = tuple(topk)
        self.num_classes = num_classes
        self.hits = torch.zeros(len(self.topk), dtype=torch.long, device=device)
        self.class_hits = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.class_total = torch.zeros(num_classes, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``scores`` (N, C), ``labels`` (N,) class indices."""
        maxk = max(self.topk)
        top = scores.topk(maxk, dim=1).indices  # (N, maxk)
        correct = top.eq(labels.view(-1, 1))  # (N, maxk)
        for i, k in enumerate(self.topk):
            self.hits[i] += correct[:, :k].any(dim=1).sum()
        labels = labels.long()
        self.class_total += torch.bincount(labels, minlength=self.num_classes)
        self.class_hits += torch.bincount(labels[correct[:, 0]], minlength=self.num_classes)

    def compute(self, info: DistInfo | None = None) -> dict[str, Any]:
        """Reduce over ranks and return the metrics.

        Returns:
            ``accuracy/top{k}`` (percent) for each k, ``num_samples``, and
            ``per_class`` (a list of ``{"class", "accuracy", "count"}``; accuracy is
            None for a class without samples).

        """
        counts = torch.cat([self.hits, self.class_hits, self.class_total])
        if info is not None:
            counts = all_reduce_sum(counts.clone(), info)
        counts_l = counts.tolist()
        k = len(self.topk)
        hits, class_hits = counts_l[:k], counts_l[k : k + self.num_classes]
        class_total = counts_l[k + self.num_classes :]
        n = sum(class_total)
        out: dict[str, Any] = {}
        for kk, h in zip(self.topk, hits, strict=True):
            out[f"accuracy/top{kk}"] = 100.0 * h / n if n else 0.0
        out["num_samples"] = n
        out["per_class"] = [
            {"class": c, "accuracy": (100.0 * h / t if t else None), "count": t}
            for c, (h, t) in enumerate(zip(class_hits, class_total, strict=True))
        ]
        return out
