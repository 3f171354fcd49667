"""Evaluation: the one implementation behind training-time validation and ``pretrain eval``.

Both paths build an :class:`Evaluator` over the same loaders and call it with the
same weights, precision and memory format, so ``pretrain eval`` reproduces the
metrics a run logged, to the last digit. What it scores depends on the model's task:

- **classification** (a model with dataset classes): ``eval.metrics`` (default
  ``Accuracy``, ``SingleLabelMetric``, ``ConfusionMatrix``) over ``model.predict``;
- **retrieval** (a :class:`~pretrain.components.BaseRetriever`): the queries of
  ``data.val`` ranked against ``data.gallery`` (encoded with the current weights
  at every evaluation, or read from an embeddings file); ``retrieval/Recall@K`` and
  ``retrieval/mAP@K`` by default;
- **selfsup** (no dataset classes): the validation ``loss``;

and, for any of them, ``[eval] knn`` adds ``knn/top{k}`` from the model's features.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn

from pretrain.components import Masked, MetricContext, MetricInputs, Similarity
from pretrain.engine.data import EvalLoader, Loaders
from pretrain.engine.distributed import DistInfo, all_reduce_sum, init_distributed
from pretrain.engine.embeddings import embed_batches, features_of, gather_in_order, load_embeddings
from pretrain.engine.knn import knn_scores
from pretrain.engine.memory_format import to_channels_last
from pretrain.engine.metrics import MetricSet, MetricsReport, gather_rows
from pretrain.engine.retrieval import Gallery, QueryLabels, rank, relevance_batches
from pretrain.engine.run_state import load_weights
from pretrain.engine.stream import StreamEvalLoader
from pretrain.errors import PretrainError
from pretrain.spec.context import ComponentNode
from pretrain.spec.data_section import DataSection, DatasetSpec, GalleryFile
from pretrain.spec.eval_section import EvalSection, Task, effective_topk, metric_nodes, retrieval_topk

__all__ = [
    "Evaluator",
    "autocast_context",
    "eval_splits",
    "evaluate_loss",
    "evaluate_model",
    "evaluate_weights",
    "load_eval_weights",
    "model_num_classes",
    "model_task",
    "record_metrics",
    "to_memory_format",
]

logger = logging.getLogger("pretrain.evaluate")


def model_num_classes(model: nn.Module) -> int | None:
    """Dataset classes a model predicts: its ``num_classes``, else its head's; None for none.

    A model that sets ``num_classes = None`` (self-supervised: its head's classes are
    pretext labels such as rotations) is not scored against the dataset's labels.
    """
    owner: Any = model if hasattr(model, "num_classes") else getattr(model, "head", None)
    n = getattr(owner, "num_classes", None)
    return n if isinstance(n, int) else None


def model_task(model: nn.Module) -> Task:
    """``retrieval`` for retrievers, ``classification`` with dataset classes, else ``selfsup``.

    Mirrors :func:`pretrain.spec.validate.spec_task` on the spec.
    """
    if getattr(model, "eval_task", None) == "retrieval":
        return "retrieval"
    return "classification" if model_num_classes(model) is not None else "selfsup"


def to_memory_format(x: Any, channels_last: bool) -> Any:
    """A batch's images (a tensor, a list of views, or ``Masked``) in the channels-last format, if asked."""
    if not channels_last:
        return x
    if isinstance(x, Masked):  # the images change layout; the (N, h, w) mask stays as it is
        return x.map_images(lambda v: to_memory_format(v, channels_last))
    if isinstance(x, list):
        return [v.contiguous(memory_format=torch.channels_last) for v in x]
    if isinstance(x, Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def record_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalars of an evaluation that a run records per epoch (``name/...`` and ``val_loss``)."""
    return {k: float(v) for k, v in metrics.items()
            if ("/" in k or k == "val_loss") and isinstance(v, int | float) and not isinstance(v, bool)}


def eval_splits(data: DataSection, cfg: EvalSection, task: Task) -> tuple[str, ...]:
    """The loader splits evaluation needs besides ``val``: a dataset gallery, kNN's training set."""
    extra: list[str] = []
    if isinstance(data.gallery, DatasetSpec) and (task == "retrieval" or cfg.knn is not None):
        extra.append("gallery")
    if cfg.knn is not None and data.gallery is None:
        extra.append("train_eval")
    return ("val", *extra)


def _per_class_rows(report: MetricsReport, classes: Sequence[str]) -> list[dict[str, Any]]:
    columns = report.per_class
    n = max((len(v) for v in columns.values()), default=0)
    rows = []
    for c in range(n):
        row: dict[str, Any] = {"class": classes[c] if c < len(classes) else str(c)}
        for name, values in columns.items():
            value = values[c]
            row[name] = int(value) if name == "count" and value is not None else value
        rows.append(row)
    return rows


@torch.no_grad()
def evaluate_model(
    model: nn.Module, batches: Iterable[tuple[Any, Tensor]], *, topk: Sequence[int], num_classes: int,
    device: torch.device, precision: str = "fp32", channels_last: bool = False,
    dist_info: DistInfo | None = None, metrics: Sequence[ComponentNode] | None = None,
    classes: Sequence[str] = (), per_class: bool = True,
) -> dict[str, Any]:
    """Score ``model.predict`` on every batch with classification metrics (default: the task's).

    Returns:
        The metrics' scalars (``accuracy/top{k}`` in percent, ``single-label/...``),
        ``num_samples``, ``per_class`` rows and ``confusion_matrix`` (nested lists).

    """
    was_training = model.training
    model.eval()
    nodes = list(metrics) if metrics is not None else metric_nodes(None, "classification")
    context = MetricContext(num_classes=num_classes, topk=tuple(topk), device=device, classes=tuple(classes))
    metric_set = MetricSet(nodes, context)
    seen = torch.zeros((), dtype=torch.long, device=device)
    try:
        for inputs, labels in batches:
            with autocast_context(device, precision):
                predict: Any = model.predict
                scores = predict(to_memory_format(inputs, channels_last))["scores"]  # (B, C)
            metric_set.update(MetricInputs(scores=scores.float(), labels=labels))
            seen += labels.shape[0]
    finally:
        model.train(was_training)
    report = metric_set.compute(dist_info)
    out: dict[str, Any] = dict(report.scalars)
    out["num_samples"] = int(all_reduce_sum(seen, dist_info) if dist_info is not None else seen)
    out.update(report.values)
    if per_class and report.per_class:
        out["per_class"] = _per_class_rows(report, classes)
    if "confusion_matrix" in report.artefacts:
        out["confusion_matrix"] = report.artefacts["confusion_matrix"].tolist()
    return out


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, batches: Iterable[tuple[Any, Tensor]], *, device: torch.device,
    precision: str = "fp32", channels_last: bool = False, dist_info: DistInfo | None = None,
) -> dict[str, Any]:
    """Mean validation ``loss`` of a model without dataset classes (self-supervised).

    Runs under a forked RNG seeded with 0: random masking/views are the same on every
    call, and the training RNG stream is untouched (bitwise resume stays exact).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of loss * n, n)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(0)
        for inputs, labels in batches:
            with autocast_context(device, precision):
                loss_fn: Any = model.loss
                loss = loss_fn(to_memory_format(inputs, channels_last), labels)["loss"]
            n = labels.shape[0]
            total += torch.stack([loss.detach().double() * n, torch.tensor(float(n), device=device)])
    model.train(was_training)
    if dist_info is not None:
        total = all_reduce_sum(total, dist_info)
    loss_sum, count = total.tolist()
    return {"val_loss": loss_sum / max(count, 1.0), "num_samples": int(count)}


class Evaluator:
    """Everything one model's evaluation needs; call it with the weights to score.

    Args:
        loaders: Built with :func:`eval_splits` (val, and the galleries kNN/retrieval need).
        data: The validated ``[data]`` table (its gallery may be an embeddings file).
        cfg: The ``[eval]`` table.
        task: :func:`model_task` of the model.
        num_classes: Classes the model predicts (classification).
        device: The evaluation device.
        dist: This process's place in the run (collectives when distributed).
        precision: ``train.precision`` (autocast for the forward passes).
        channels_last: Feed channels-last batches.

    """

    def __init__(
        self, *, loaders: Loaders, data: DataSection, cfg: EvalSection, task: Task, num_classes: int | None,
        device: torch.device, dist: DistInfo, precision: str = "fp32", channels_last: bool = False,
    ) -> None:
        self.loaders, self.data, self.cfg, self.task = loaders, data, cfg, task
        self.num_classes, self.device, self.dist = num_classes, device, dist
        self.precision, self.channels_last = precision, channels_last
        self.nodes = metric_nodes(cfg, task) if task != "selfsup" else []
        self._check_labels()
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    def _check_labels(self) -> None:
        """Label problems are errors before any image is encoded."""
        info = self.loaders.info
        val = info.get("val")
        if self.cfg.knn is not None and val is not None and not val.labelled:
            raise PretrainError("eval.knn: data.val has no class labels (kNN scores class predictions)",
                                hint="Give data.val a labelled dataset, or remove eval.knn.")
        gallery = info.get("gallery") or info.get("train_eval")
        if self.cfg.knn is not None and gallery is not None and not gallery.labelled:
            where = "data.gallery" if "gallery" in info else "data.train"
            raise PretrainError(f"eval.knn: {where} has no class labels, so its items cannot vote",
                                hint="Use a labelled gallery for kNN (or give a labelled [data.gallery]).")
        if self.task == "retrieval" and val is not None and not val.labelled and val.matches is None:
            raise PretrainError("data.val: the retrieval queries have no labels, so no gallery item can match",
                                hint="Use class-labelled queries, or an index-labelled query set (InShop).")

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        """Every metric of this evaluation for ``model`` as it is now (a collective under DDP)."""
        self._cache = {}
        val = self.loaders.val
        if val is None:
            raise PretrainError("the spec has no [data.val] table, so there is nothing to evaluate on",
                                hint="Add [data.val] (e.g. type = \"Digits\", split = \"val\").")
        device, precision, channels_last, dist = self.device, self.precision, self.channels_last, self.dist
        if self.task == "classification":
            assert self.num_classes is not None
            out = evaluate_model(model, val, topk=effective_topk(self.cfg, self.num_classes),
                                 num_classes=self.num_classes, metrics=self.nodes, classes=self.loaders.classes,
                                 per_class=self.cfg.per_class, device=device, precision=precision,
                                 channels_last=channels_last, dist_info=dist)
        elif self.task == "retrieval":
            out = self._retrieval(model)
        else:
            out = evaluate_loss(model, val, device=device, precision=precision, channels_last=channels_last,
                                dist_info=dist)
        if self.cfg.knn is not None:
            out.update(self._knn(model))
        self._cache = {}
        return out

    # ------------------------------------------------------------------ features

    def _embed(self, model: nn.Module, name: str, loader: EvalLoader | StreamEvalLoader, *,
               gather: bool) -> tuple[Tensor, Tensor]:
        key = f"{name}:{gather}"
        if key not in self._cache:
            feats, labels = embed_batches(
                model, loader, autocast=lambda: autocast_context(self.device, self.precision),
                memory_format=lambda x: to_memory_format(x, self.channels_last), extract=features_of,
            )
            if gather and isinstance(loader, StreamEvalLoader):
                # A stream's split is not in dataset order; features and labels share one order.
                feats = torch.cat(gather_rows(feats.to(self.device), self.dist))
                labels = torch.cat(gather_rows(labels.to(self.device), self.dist))
            elif gather:
                feats = gather_in_order(feats.to(self.device), self.dist, loader.total_samples)
                labels = gather_in_order(labels.to(self.device), self.dist, loader.total_samples)
            self._cache[key] = (feats.to(self.device), labels.to(self.device))
        return self._cache[key]

    def _gallery(self, model: nn.Module, *, for_knn: bool) -> Gallery:
        source = self.data.gallery
        if isinstance(source, GalleryFile):
            emb = load_embeddings(source.path, f"{source.loc}.embeddings")
            return Gallery(emb.feats.to(self.device), emb.labels.to(self.device), emb.classes, source.path)
        if source is not None and self.loaders.gallery is not None:
            feats, labels = self._embed(model, "gallery", self.loaders.gallery, gather=True)
            return Gallery(feats, labels, self.loaders.info["gallery"].classes, "data.gallery")
        if for_knn and self.loaders.train_eval is not None:
            feats, labels = self._embed(model, "train_eval", self.loaders.train_eval, gather=True)
            return Gallery(feats, labels, self.loaders.info["train_eval"].classes, "data.train")
        raise PretrainError("no gallery to rank: add [data.gallery] (a dataset table or embeddings = FILE)"
                            + ("; kNN can also use [data.train]" if for_knn else ""))

    # ------------------------------------------------------------------ tasks

    def _retrieval(self, model: nn.Module) -> dict[str, Any]:
        val = self.loaders.val
        assert val is not None
        info = self.loaders.info["val"]
        if info.matches is not None and isinstance(self.loaders.gallery, StreamEvalLoader):
            raise PretrainError("data.val: the queries list matching gallery indices, but data.gallery is a "
                                "sharded stream, whose items are not read in index order",
                                hint="Use a class-labelled gallery, or an indexed dataset (or an embeddings "
                                "file from `pretrain embed`) as [data.gallery].")
        gallery = self._gallery(model, for_knn=False)
        if info.matches is None:
            if not bool((gallery.labels >= 0).all()):
                raise PretrainError(f"{gallery.source} has unlabelled items, but the queries are class-labelled",
                                    hint="Give the gallery class labels, or use an index-labelled query set.")
            if gallery.classes and info.classes and tuple(gallery.classes) != tuple(info.classes):
                raise PretrainError(
                    f"{gallery.source} has classes {list(gallery.classes)[:8]}, data.val "
                    f"{list(info.classes)[:8]}: a match is 'same class', so they must agree",
                    hint="Embed the gallery from data with the same classes (in the same order).")
        feats, labels = self._embed(model, "val", val, gather=False)
        queries = QueryLabels(labels, info.matches)
        ks = retrieval_topk(self.cfg, getattr(model, "topk", None))
        similarity: Similarity = getattr(model, "similarity", "cosine")
        _, indices = rank(feats, gallery.feats, max(ks), similarity, self.cfg.search)
        metric_set = MetricSet(self.nodes, MetricContext(num_classes=None, topk=ks, device=self.device))
        for inputs in relevance_batches(indices, queries, gallery):
            metric_set.update(inputs)
        out: dict[str, Any] = dict(metric_set.compute(self.dist).scalars)
        seen = torch.tensor(feats.shape[0], device=self.device)
        out["num_queries"] = int(all_reduce_sum(seen, self.dist))
        out["gallery_size"] = int(gallery.feats.shape[0])
        return out

    def _knn(self, model: nn.Module) -> dict[str, Any]:
        val = self.loaders.val
        assert val is not None and self.cfg.knn is not None
        gallery = self._gallery(model, for_knn=True)
        classes = self.loaders.info["val"].classes
        if gallery.classes and tuple(gallery.classes) != tuple(classes):
            raise PretrainError(f"eval.knn: {gallery.source} has classes {list(gallery.classes)[:8]}, data.val "
                                f"{list(classes)[:8]}; kNN needs one label space",
                                hint="Use a gallery with the validation data's classes.")
        feats, labels = self._embed(model, "val", val, gather=False)
        out: dict[str, Any] = knn_scores(feats, labels, gallery.feats, gallery.labels, num_classes=len(classes),
                                         cfg=self.cfg.knn, search=self.cfg.search, info=self.dist)
        out["knn_gallery_size"] = int(gallery.feats.shape[0])
        return out


def load_eval_weights(model: nn.Module, tensors: dict[str, Tensor], path: Path | str) -> str | None:
    """Load weights for evaluation: tensors of components the model lacks are dropped.

    A classifier's weights evaluate as a retriever this way (its ``head.*`` is left
    out). Everything else is strict: a missing key, or an unknown key of a component
    the model has, is an error.

    Returns:
        A one-line note naming what was ignored, or None.

    """
    children = {name for name, _ in model.named_children()}
    absent = sorted({k.split(".", 1)[0] for k in tensors if "." in k and k.split(".", 1)[0] not in children})
    kept = {k: v for k, v in tensors.items() if "." not in k or k.split(".", 1)[0] in children}
    load_weights(model, kept, path)
    if not absent:
        return None
    n = len(tensors) - len(kept)
    parts = ", ".join(f"{p}.*" for p in absent)
    return f"ignored {n} tensor(s) of {parts} in {path}: {type(model).__name__} has no such component"


def evaluate_weights(
    spec: Any, weights: str | Path, device: str | None = None, console: Console | None = None,
) -> dict[str, Any]:
    """Score ``weights`` with ``spec``'s model on its ``data.val`` (one process or torchrun).

    Uses the spec's ``train.precision``, ``channels_last`` and seed, as training-time
    validation does.

    Returns:
        Classifiers: ``accuracy/top{k}`` (percent), ``single-label/...``, ``num_samples``,
        ``per_class`` (with class names), ``confusion_matrix``. Retrievers:
        ``retrieval/Recall@K``, ``retrieval/mAP@K``, ``num_queries``, ``gallery_size``.
        Models without classes: ``val_loss``, ``num_samples``. ``knn/top{k}`` with
        ``[eval] knn``. All with ``weights`` (the file read).

    Raises:
        PretrainError: No ``[data.val]``, unreadable weights, or weights that do not fit.

    """
    from pretrain.assembly.assemble import build_node
    from pretrain.engine.data import build_loaders
    from pretrain.engine.sharded import load_weights_file

    weights = Path(weights)
    data = spec.sections.get("data")
    if data is None or data.val is None:
        raise PretrainError("the spec has no [data.val] table, so there is nothing to evaluate on",
                            hint="Add [data.val] (e.g. type = \"Digits\", split = \"val\").")
    train = spec.sections.get("train")
    eval_cfg = spec.sections.get("eval") or EvalSection()
    precision = train.precision if train is not None else "fp32"
    info = init_distributed(device or (train.device if train is not None else "auto"))
    tensors, _ = load_weights_file(weights)  # checksums verified before anything is built; shards merged
    model = build_node(spec.model, init=False).to(info.device)
    note = load_eval_weights(model, tensors, weights)
    if note and info.is_main:
        if console is not None:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        else:
            logger.info(note)
    channels_last = bool(train is not None and train.channels_last and info.device.type != "mps")
    if channels_last:
        to_channels_last(model, info.device)
    num_classes, task = model_num_classes(model), model_task(model)
    loaders = build_loaders(
        data, device=info.device, distributed=info.distributed, rank=info.rank,
        world_size=info.world_size, seed=train.seed if train is not None else 0,
        num_classes=num_classes, in_channels=getattr(model, "in_channels", None),
        splits=eval_splits(data, eval_cfg, task), retrieval=task == "retrieval",
    )
    evaluator = Evaluator(loaders=loaders, data=data, cfg=eval_cfg, task=task, num_classes=num_classes,
                          device=info.device, dist=info, precision=precision, channels_last=channels_last)
    metrics = evaluator(model)
    metrics["weights"] = str(weights)
    return metrics
