"""The ``metric`` kind: built-in classification metrics against MMPretrain's numbers and brute force,
exact merging of states, and the ``[eval]`` checks (metric tasks, best_metric names, faiss extra)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from pretrain.components import BaseMetric, MetricContext, MetricInputs
from pretrain.engine.metrics import MetricSet
from pretrain.errors import SpecError
from pretrain.registry.kinds import KIND_INFO
from pretrain.registry.registry import Registry
from pretrain.spec.context import ValidationContext
from pretrain.spec.validate import validate_spec

CPU = torch.device("cpu")


def metric_set(tables: list[dict[str, Any]], num_classes: int | None = 4, topk=(1,)) -> MetricSet:
    ctx = ValidationContext()
    nodes = ctx.components("metric", tables, "eval.metrics")
    assert not ctx.issues, ctx.issues
    return MetricSet(nodes, MetricContext(num_classes=num_classes, topk=topk, device=CPU))


def one_hot_scores(pred: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(pred), num_classes).float() * 0.9 + 0.025


def test_metric_is_a_registered_kind_with_the_builtins() -> None:
    info = KIND_INFO["metric"]
    assert (info.group, info.module, info.weights, info.spec, info.base) == (
        "pretrain.metrics", False, False, True, "BaseMetric")
    names = {r.name for r in Registry(autoload=False).entries("metric")}
    assert {"Accuracy", "SingleLabelMetric", "ConfusionMatrix", "RetrievalRecall",
            "RetrievalAveragePrecision"} <= names


def test_single_label_metric_matches_mmpretrain_example() -> None:
    # MMPretrain's docstring: y_pred [0, 1, 1, 3], y_true [0, 2, 1, 3] -> 62.5, 75.0, 66.6667, support 4.
    metrics = metric_set([{"type": "SingleLabelMetric", "items": ["precision", "recall", "f1-score", "support"]},
                          {"type": "ConfusionMatrix"}])
    metrics.update(MetricInputs(scores=one_hot_scores([0, 1, 1, 3], 4), labels=torch.tensor([0, 2, 1, 3])))
    out = metrics.compute()
    assert out.scalars["single-label/precision"] == pytest.approx(62.5)
    assert out.scalars["single-label/recall"] == pytest.approx(75.0)
    assert out.scalars["single-label/f1-score"] == pytest.approx(66.66666, rel=1e-5)
    assert out.scalars["single-label/support"] == 4
    assert out.artefacts["confusion_matrix"].tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    assert out.per_class["precision"] == [100.0, 50.0, 0.0, 100.0]


def _reference_prf(pred: torch.Tensor, true: torch.Tensor, c: int) -> dict[str, Any]:
    """Per-class precision/recall/F1 by counting, and MMPretrain's macro and micro averages."""
    rows = []
    for k in range(c):
        tp = int(((pred == k) & (true == k)).sum())
        p = 100.0 * tp / max(int((pred == k).sum()), 1)
        r = 100.0 * tp / max(int((true == k).sum()), 1)
        rows.append((p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0))
    tp = int((pred == true).sum())
    micro_p = micro_r = 100.0 * tp / len(true)
    return {"rows": rows, "macro": [sum(x[i] for x in rows) / c for i in range(3)],
            "micro": [micro_p, micro_r, 2 * micro_p * micro_r / (micro_p + micro_r)]}


def test_precision_recall_f1_equal_a_count_by_hand_and_merge_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(301, 7, generator=gen)
    labels = torch.randint(0, 7, (301,), generator=gen)
    ref = _reference_prf(scores.argmax(1), labels, 7)
    tables = [{"type": "SingleLabelMetric"}, {"type": "SingleLabelMetric", "average": "micro"},
              {"type": "SingleLabelMetric", "average": None}, {"type": "Accuracy", "topk": [1, 3]}]
    whole = metric_set(tables, 7)
    whole.update(MetricInputs(scores=scores, labels=labels))
    # Two "ranks" on disjoint shards: summing their states is exactly the whole.
    a, b = metric_set(tables, 7), metric_set(tables, 7)
    a.update(MetricInputs(scores=scores[::2], labels=labels[::2]))
    b.update(MetricInputs(scores=scores[1::2], labels=labels[1::2]))
    for ma, mb in zip(a.metrics, b.metrics, strict=True):
        for name in ma.states:
            ma.states[name] = ma.states[name] + mb.states[name]
    merged, out = a.compute(), whole.compute()
    assert merged.scalars == out.scalars and merged.values == out.values
    for i, item in enumerate(("precision", "recall", "f1-score")):
        assert out.scalars[f"single-label/{item}"] == pytest.approx(ref["macro"][i])
        assert out.scalars[f"single-label/{item}_micro"] == pytest.approx(ref["micro"][i])
        assert out.values[f"single-label/{item}_classwise"] == pytest.approx([r[i] for r in ref["rows"]])
    assert out.scalars["accuracy/top1"] == pytest.approx(100.0 * float((scores.argmax(1) == labels).float().mean()))


def test_thresholds_name_their_keys_like_mmpretrain() -> None:
    metrics = metric_set([{"type": "Accuracy", "thrs": [None, 0.5]},
                          {"type": "SingleLabelMetric", "thrs": [None, 0.5], "items": ["precision"]}], 2)
    scores = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55]])
    metrics.update(MetricInputs(scores=scores, labels=torch.tensor([0, 1, 0])))
    out = metrics.compute().scalars
    assert out["accuracy/top1_no-thr"] == pytest.approx(200 / 3)
    assert out["accuracy/top1_thr-0.50"] == pytest.approx(200 / 3)  # both correct ones score > 0.5
    assert set(out) >= {"single-label/precision_no-thr", "single-label/precision_thr-0.50"}


def test_a_metric_plugin_needs_only_the_documented_contract() -> None:
    class ErrorRate(BaseMetric):
        def init_states(self, context: MetricContext) -> None:
            self.add_state("wrong", torch.zeros((), dtype=torch.long, device=context.device))
            self.add_state("seen", torch.zeros((0,), device=context.device), reduce="cat")

        def update(self, inputs: MetricInputs) -> None:
            scores, labels = self.require(inputs, "scores", "labels")
            self.states["wrong"] += (scores.argmax(1) != labels).sum()
            self.states["seen"] = torch.cat([self.states["seen"], labels.float()])

        def compute(self):
            from pretrain.components import MetricResult

            return MetricResult(scalars={"error/top1": 100.0 * int(self.states["wrong"]) / len(self.states["seen"])})

    metric = ErrorRate()
    metric.reset(MetricContext(num_classes=2, topk=(1,), device=CPU))
    metric.update(MetricInputs(scores=torch.tensor([[1.0, 0.0], [1.0, 0.0]]), labels=torch.tensor([0, 1])))
    assert metric.compute().scalars == {"error/top1": 50.0}
    with pytest.raises(Exception, match="needs 'scores'"):
        metric.update(MetricInputs(relevance=torch.ones(1, 1, dtype=torch.bool)))


# --------------------------------------------------------------------------- [eval] validation

CLASSIFIER = {"type": "ImageClassifier", "in_channels": 1, "mean": [127.5], "std": [127.5],
              "backbone": {"type": "ResNet_CIFAR", "depth": 18, "in_channels": 1, "stem_channels": 4,
                           "base_channels": 4},
              "neck": {"type": "GlobalAveragePooling"},
              "head": {"type": "LinearClsHead", "num_classes": 10, "in_channels": 32}}
DATA = {"batch_size": 8, "val": {"type": "Digits", "split": "val", "image_size": 8},
        "train": {"type": "Digits", "split": "train", "image_size": 8}}


def _spec(model=CLASSIFIER, eval_=None, best=None, data=DATA) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": model, "data": data,
                            "train": {"epochs": 1, "optimizer": {"type": "SGD", "lr": 0.1}}}
    if best:
        spec["train"]["best_metric"] = best
    if eval_ is not None:
        spec["eval"] = eval_
    return spec


def _issues(spec: dict[str, Any]) -> dict[str, str]:
    try:
        validate_spec(spec)
    except SpecError as exc:
        return {i.loc: i.msg for i in exc.issues}
    return {}


def test_best_metric_accepts_every_reported_scalar_and_nothing_else() -> None:
    assert _issues(_spec(best="single-label/f1-score")) == {}
    assert _issues(_spec(eval_={"knn": {"k": 5}}, best="knn/top1")) == {}
    issues = _issues(_spec(best="knn/top1"))  # no [eval] knn configured
    assert "knn/top1" in issues["train.best_metric"] and "accuracy/top1" in issues["train.best_metric"]
    issues = _issues(_spec(best="retrieval/Recall@1"))
    assert "train.best_metric" in issues


def test_eval_metrics_are_validated_components_of_the_models_task() -> None:
    issues = _issues(_spec(eval_={"metrics": [{"type": "Acuracy"}]}))
    assert "did you mean 'Accuracy'" in issues["eval.metrics[0].type"]
    issues = _issues(_spec(eval_={"metrics": [{"type": "RetrievalRecall"}]}))
    assert "scores retrieval, but the model is a classifier" in issues["eval.metrics[0].type"]
    issues = _issues(_spec(eval_={"metrics": [{"type": "SingleLabelMetric", "average": "weighted"}]}))
    assert "eval.metrics[0].average" in issues
    assert _issues(_spec(eval_={"metrics": [{"type": "SingleLabelMetric", "average": "micro"}]},
                         best="single-label/recall_micro")) == {}


def test_faiss_without_the_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    issues = _issues(_spec(eval_={"search": {"type": "faiss"}}))
    assert "pretrain[faiss]" in issues["eval.search.type"]
