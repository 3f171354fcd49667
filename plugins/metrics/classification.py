"""Single-label classification metrics: ``Accuracy``, ``SingleLabelMetric``, ``ConfusionMatrix``.

Provenance: MMPretrain ``evaluation/metrics/single_label.py`` (same names, fields,
keys and formulas). Every state is a count (top-k hits, per-class true positives,
predicted and true positives, a C x C matrix), summed across processes, so the
results are exact under DDP; MMPretrain gathers every prediction to rank 0 instead.
Scores must be (N, C) class scores; thresholds compare them with ``>`` as MMPretrain
does (``thrs = 0`` is a no-op for softmax scores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseMetric, MetricContext, MetricInputs, MetricResult
from pretrain.errors import PretrainError

__all__ = ["Accuracy", "ConfusionMatrix", "SingleLabelMetric", "threshold_suffix"]

PositiveInt = Annotated[int, Field(gt=0)]
Thresholds = float | None | list[float | None]
Item = Literal["precision", "recall", "f1-score", "support"]


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def threshold_suffix(thr: float | None, several: bool) -> str:
    """MMPretrain's key suffix for one of several thresholds (``_thr-0.50``, ``_no-thr``)."""
    if not several:
        return ""
    return "_no-thr" if thr is None else f"_thr-{thr:.2f}"


def _num_classes(metric: BaseMetric, context: MetricContext, declared: int | None) -> int:
    if context.num_classes is None:
        raise PretrainError(f"{type(metric).__name__} needs class labels, but the evaluated data has none")
    if declared is not None and declared != context.num_classes:
        raise PretrainError(
            f"{type(metric).__name__}.num_classes = {declared} but the model predicts {context.num_classes} classes",
            hint="Remove num_classes from the metric (it follows the model) or fix it.",
        )
    return context.num_classes


def _scores_labels(metric: BaseMetric, inputs: MetricInputs) -> tuple[Tensor, Tensor]:
    scores, labels = metric.require(inputs, "scores", "labels")
    return scores.float(), labels.long().view(-1)


class Accuracy(BaseMetric):
    """Top-k accuracy in percent (``accuracy/top{k}``), with top-1 accuracy per class.

    A sample counts as correct at k when its class is among the k highest scores (and,
    with a threshold, that score is above it). Ties are broken by ``torch.topk``.

    Args:
        topk: The k values; default: ``eval.topk``.
        thrs: Score threshold(s): a prediction counts only when its score is above
            it; none disables it. With several, every key gets a suffix
            (``accuracy/top1_thr-0.50``, ``accuracy/top1_no-thr``).

    """

    example_config: ClassVar[dict[str, Any]] = {"topk": [1, 2]}

    def __init__(self, *, topk: PositiveInt | list[PositiveInt] | None = None, thrs: Thresholds = 0.0) -> None:
        super().__init__()
        self.topk = None if topk is None else _as_tuple(topk)
        self.thrs = _as_tuple(thrs)

    @classmethod
    def metric_names(cls, params: Mapping[str, Any], topk: Sequence[int]) -> list[str]:
        """``accuracy/top{k}`` per k (and threshold suffix)."""
        ks = topk if params.get("topk") is None else _as_tuple(params["topk"])
        thrs = _as_tuple(params.get("thrs", 0.0))
        return [f"accuracy/top{k}{threshold_suffix(t, len(thrs) > 1)}" for k in ks for t in thrs]

    def init_states(self, context: MetricContext) -> None:
        """Hits per (k, threshold), per-class top-1 hits and sample counts."""
        self.ks = self.topk or context.topk
        c = _num_classes(self, context, None)
        if max(self.ks) > c:
            raise PretrainError(
                f"eval.topk asks for top-{max(self.ks)} accuracy but the model has only {c} classes",
                hint=f"set eval.topk to values <= {c}, e.g. [1]",
            )
        long = {"dtype": torch.long, "device": context.device}
        self.add_state("hits", torch.zeros(len(self.ks), len(self.thrs), **long))
        self.add_state("class_hits", torch.zeros(c, **long))
        self.add_state("class_total", torch.zeros(c, **long))

    def update(self, inputs: MetricInputs) -> None:
        """Count hits of one batch."""
        scores, labels = _scores_labels(self, inputs)
        top_scores, top = scores.topk(max(self.ks), dim=1)  # (N, maxk)
        correct = top.eq(labels.view(-1, 1))  # (N, maxk)
        for j, thr in enumerate(self.thrs):
            ok = correct if thr is None else correct & (top_scores > thr)
            for i, k in enumerate(self.ks):
                self.states["hits"][i, j] += ok[:, :k].any(dim=1).sum()
        c = self.states["class_total"].numel()
        first = correct[:, 0] if self.thrs[0] is None else correct[:, 0] & (top_scores[:, 0] > self.thrs[0])
        self.states["class_total"] += torch.bincount(labels, minlength=c)
        self.states["class_hits"] += torch.bincount(labels[first], minlength=c)

    def compute(self) -> MetricResult:
        """Percentages from the reduced counts."""
        hits = self.states["hits"].tolist()
        class_hits, class_total = self.states["class_hits"].tolist(), self.states["class_total"].tolist()
        n = sum(class_total)
        several = len(self.thrs) > 1
        scalars = {
            f"accuracy/top{k}{threshold_suffix(t, several)}": 100.0 * hits[i][j] / n if n else 0.0
            for i, k in enumerate(self.ks) for j, t in enumerate(self.thrs)
        }
        accuracy: list[float | None] = [100.0 * h / t if t else None
                                        for h, t in zip(class_hits, class_total, strict=True)]
        counts: list[float | None] = [float(t) for t in class_total]
        return MetricResult(scalars=scalars, per_class={"accuracy": accuracy, "count": counts})


class SingleLabelMetric(BaseMetric):
    """Precision, recall, F1-score and support per class, and their macro or micro average.

    From the top-1 prediction of every sample (negative when its score is not above
    the threshold). Macro: the mean over classes of the per-class values (a class
    never predicted has precision 0, as in MMPretrain); micro: the values of the
    summed counts. Keys: ``single-label/precision`` (macro), ``..._micro`` (micro),
    ``..._classwise`` (lists, ``average`` unset), and a threshold suffix with several.

    Args:
        thrs: Score threshold(s) of a positive prediction; none: always positive.
        items: What to report, of precision, recall, f1-score and support.
        average: ``macro``, ``micro``, or none for per-class lists.
        num_classes: Class count; it must equal the model's (it follows it when unset).

    """

    def __init__(
        self,
        *,
        thrs: Thresholds = 0.0,
        items: Annotated[tuple[Item, ...], Field(min_length=1)] = ("precision", "recall", "f1-score"),
        average: Literal["macro", "micro"] | None = "macro",
        num_classes: PositiveInt | None = None,
    ) -> None:
        super().__init__()
        self.thrs = _as_tuple(thrs)
        self.items = tuple(items)
        self.average = average
        self.num_classes = num_classes

    @classmethod
    def metric_names(cls, params: Mapping[str, Any], topk: Sequence[int]) -> list[str]:
        """Scalar keys (none with ``average`` unset: those are lists)."""
        average = params.get("average", "macro")
        if average is None:
            return []
        thrs = _as_tuple(params.get("thrs", 0.0))
        tail = "_micro" if average == "micro" else ""
        items = params.get("items", ("precision", "recall", "f1-score"))
        return [f"single-label/{item}{threshold_suffix(t, len(thrs) > 1)}{tail}" for t in thrs for item in items]

    def init_states(self, context: MetricContext) -> None:
        """True positives, predicted positives and real positives per (threshold, class)."""
        c = _num_classes(self, context, self.num_classes)
        for name in ("tp", "pred", "gt"):
            self.add_state(name, torch.zeros(len(self.thrs), c, dtype=torch.long, device=context.device))

    def update(self, inputs: MetricInputs) -> None:
        """Count one batch."""
        scores, labels = _scores_labels(self, inputs)
        c = self.states["gt"].shape[1]
        top_score, top = scores.max(dim=1)  # (N,), (N,)
        gt = torch.bincount(labels, minlength=c)
        for j, thr in enumerate(self.thrs):
            positive = torch.ones_like(top, dtype=torch.bool) if thr is None else top_score > thr
            self.states["pred"][j] += torch.bincount(top[positive], minlength=c)
            self.states["tp"][j] += torch.bincount(top[positive & (top == labels)], minlength=c)
            self.states["gt"][j] += gt

    def compute(self) -> MetricResult:
        """The items per class and averaged, from the reduced counts."""
        result = MetricResult()
        several = len(self.thrs) > 1
        for j, thr in enumerate(self.thrs):
            tp, pred, gt = (self.states[k][j].tolist() for k in ("tp", "pred", "gt"))
            per = _prf(tp, pred, gt)
            if self.average == "micro":
                values = _prf([sum(tp)], [sum(pred)], [sum(gt)])
                averaged = {k: v[0] for k, v in values.items()}
            else:
                averaged = {k: sum(v) / len(v) if v else 0.0 for k, v in per.items()}
            averaged["support"] = float(sum(gt))
            suffix = threshold_suffix(thr, several)
            for item in self.items:
                if self.average is None:
                    result.values[f"single-label/{item}{suffix}_classwise"] = (
                        [float(g) for g in gt] if item == "support" else per[item]
                    )
                else:
                    tail = "_micro" if self.average == "micro" else ""
                    result.scalars[f"single-label/{item}{suffix}{tail}"] = averaged[item]
            if j == 0:
                result.per_class = {k: list(v) for k, v in per.items()}
        return result


def _prf(tp: list[int], pred: list[int], gt: list[int]) -> dict[str, list[float | None]]:
    """Per-entry precision, recall and F1 in percent (MMPretrain: counts clamped to >= 1)."""
    precision = [100.0 * t / max(p, 1) for t, p in zip(tp, pred, strict=True)]
    recall = [100.0 * t / max(g, 1) for t, g in zip(tp, gt, strict=True)]
    eps = 1.1920928955078125e-07  # float32 epsilon, as MMPretrain clamps P + R
    f1 = [2 * p * r / max(p + r, eps) for p, r in zip(precision, recall, strict=True)]
    return {"precision": list(precision), "recall": list(recall), "f1-score": list(f1)}


class ConfusionMatrix(BaseMetric):
    """The C x C confusion matrix: row = true class, column = predicted (top-1) class.

    Reported as the ``confusion_matrix`` artefact: nested lists in ``pretrain eval
    --json``, ``confusion_matrix.png`` in a run directory.

    Args:
        num_classes: Class count; it must equal the model's (it follows it when unset).

    """

    def __init__(self, *, num_classes: PositiveInt | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes

    def init_states(self, context: MetricContext) -> None:
        """One (C, C) count matrix."""
        c = _num_classes(self, context, self.num_classes)
        self.add_state("matrix", torch.zeros(c, c, dtype=torch.long, device=context.device))

    def update(self, inputs: MetricInputs) -> None:
        """Count one batch."""
        scores, labels = _scores_labels(self, inputs)
        c = self.states["matrix"].shape[0]
        index = labels * c + scores.argmax(dim=1)  # (N,)
        self.states["matrix"] += torch.bincount(index, minlength=c * c).view(c, c)

    def compute(self) -> MetricResult:
        """The matrix as an artefact."""
        return MetricResult(artefacts={"confusion_matrix": self.states["matrix"].cpu()})
