"""The whole-step check: the model's training and evaluation steps, once, on example batches.

What it runs is what the trainer runs: ``model.train(); model.loss(inputs, labels)``
for ``data.train``, and for ``data.val`` what evaluation calls (``model.predict`` in
eval mode for a model that predicts dataset classes, else ``model.loss`` in eval mode,
the validation loss). The inputs come from the spec's own pipelines: a small random
uint8 batch of the dataset's image size goes through the built transforms exactly as
the in-memory loaders do, so ``MultiView`` views and mask generators' ``Masked``
batches are what training gives. A spec without ``[data]`` uses the model's own
``example_inputs(batch_size)`` (the conformance kit's convention) or images of its
input size.

Where it runs (``device``):

* ``cpu``: real tensors, weights from the components' constructors (no init rules,
  checkpoints not read; a ``Pretrained`` rule's load is simulated so that components
  that refuse unloaded weights see one). Fast for small models and exact: any code runs.
* ``meta``: shapes only (no memory), but data-dependent code (``.item()``, boolean
  masks) cannot run there, and the first meta convolution or batch norm imports
  seconds of torch internals (sympy, dynamo).
* ``auto`` (default): the CPU up to :data:`CPU_MAX_PARAMS` parameters, else meta; a
  meta pass that fails is repeated on the CPU up to :data:`FALLBACK_MAX_PARAMS`.

Stage shapes (backbone, neck, head) are recorded with forward hooks during the
training step, so a mismatched ``in_channels`` is reported with both numbers instead
of the raw error from inside the layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.assembly.assemble import build_tree, is_meta_limitation
from pretrain.assembly.blame import Culprit, blame
from pretrain.components import Masked, Pipeline
from pretrain.engine.embeddings import features_of
from pretrain.errors import PretrainError, SpecIssue
from pretrain.spec.validate import ComponentNode, ValidatedSpec

__all__ = [
    "BATCH",
    "CPU_MAX_PARAMS",
    "CPU_MAX_PIXELS",
    "FALLBACK_MAX_PARAMS",
    "ExampleBatch",
    "StepRecord",
    "StepResult",
    "describe_batch",
    "example_batches",
    "meta_limited",
    "run_steps",
]

#: Samples per example batch (batch norm in training mode needs more than one).
BATCH = 2
#: ``auto`` runs the step on real CPU tensors up to this many parameters (else on meta).
CPU_MAX_PARAMS = 30_000_000
#: ... and up to this many pixels in the largest view (a 384 x 384 image).
CPU_MAX_PIXELS = 384 * 384
#: A failed meta pass is repeated on the CPU up to this many parameters.
FALLBACK_MAX_PARAMS = 250_000_000


@dataclass
class ExampleBatch:
    """One example batch (on the CPU) and where it comes from."""

    split: str  # "train", "val", or "example" (no [data] table)
    inputs: Any  # Tensor | list[Tensor] | Masked
    labels: Tensor
    source: str  # "a data.train batch", "the model's example_inputs"


@dataclass(frozen=True)
class StepRecord:
    """A step that ran: which split, which call, on what, giving what."""

    split: str
    call: str
    inputs: str
    output: str


@dataclass
class StepResult:
    """What :func:`run_steps` found."""

    device: str
    records: list[StepRecord] = field(default_factory=list)
    stages: list[tuple[str, str]] = field(default_factory=list)
    issues: list[SpecIssue] = field(default_factory=list)
    cause: BaseException | None = None  # the first exception behind an issue (for --debug)
    features: Any = None  # the training step's backbone (+ neck) output: what a gallery holds


# ------------------------------------------------------------------------------ descriptions


def _shape(t: Tensor) -> str:
    return str(tuple(int(d) for d in t.shape)) if t.dim() else "scalar"


def describe_batch(x: Any) -> str:
    """``(2, 3, 32, 32)``, ``2 views [(2, 1, 16, 16), (2, 1, 16, 16)]``, ``Masked(...)``."""
    if isinstance(x, Masked):
        return f"Masked(images {describe_batch(x.images)}, mask {_shape(x.mask)})"
    if isinstance(x, list):
        return f"{len(x)} view{'s' if len(x) != 1 else ''} [" + ", ".join(describe_batch(v) for v in x) + "]"
    if isinstance(x, Tensor):
        return _shape(x)
    if isinstance(x, tuple):
        return "tuple[" + ", ".join(describe_batch(v) for v in x) + "]"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k}: {describe_batch(v)}" for k, v in x.items()) + "}"
    return type(x).__name__


def _structure(x: Any) -> Any:
    """What kind of batch ``x`` is, ignoring sizes: views, masks, rank."""
    if isinstance(x, Masked):
        return ("masked", _structure(x.images))
    if isinstance(x, list):
        return ("views", len(x))
    return ("tensor", x.dim() if isinstance(x, Tensor) else None)


def _map(x: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(x, Masked):
        return Masked(_map(x.images, fn), fn(x.mask))
    if isinstance(x, list):
        return [_map(v, fn) for v in x]
    if isinstance(x, tuple):
        return tuple(_map(v, fn) for v in x)
    return fn(x) if isinstance(x, Tensor) else x


# ------------------------------------------------------------------------------ example batches


def _raw_size(spec: ValidatedSpec, dataset: Any, default: tuple[int, int]) -> tuple[tuple[int, int], bool]:
    """Image size a dataset yields before its pipeline, and whether the spec says so.

    ``dataset`` is its validated node (or, from Python, an already built dataset).
    """
    if isinstance(dataset, ComponentNode):
        size = dataset.params.get("image_size")
    else:
        size = getattr(dataset, "image_size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size), True
    data = spec.sections.get("data")
    target = data.options.image_size if data is not None else None
    if isinstance(target, int):
        return (target, target), False
    return default, False


def example_batches(
    spec: ValidatedSpec, model: Any, input_size: tuple[int, int], *, skip: Sequence[str] = (),
) -> tuple[list[ExampleBatch], list[SpecIssue], list[str]]:
    """Example batches for each split of ``[data]`` (or the model's own example input).

    Args:
        spec: The validated spec.
        model: The model built on the meta device (for ``in_channels``/``example_inputs``).
        input_size: ``(H, W)`` when nothing else says (no ``[data]``, no image size).
        skip: Splits not to make a batch for (they already have reported problems).

    Returns:
        ``(batches, issues, notes)``: a pipeline that fails on data whose size the spec
        states is an issue; on a guessed size it is a note and the split is skipped.

    """
    channels = int(getattr(model, "in_channels", 3) or 3)
    classes = _classes(model)
    labels = torch.arange(BATCH) % max(classes or 1, 1)
    data = spec.sections.get("data")
    if data is None:
        return [_model_example(model, channels, input_size, labels)], [], []
    batches: list[ExampleBatch] = []
    issues: list[SpecIssue] = []
    notes: list[str] = []
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        dataset = getattr(data, split, None)
        if dataset is None or split in skip:
            continue
        (h, w), known = _raw_size(spec, dataset.dataset, input_size)
        images = torch.randint(0, 256, (BATCH, channels, h, w), dtype=torch.uint8, generator=generator)
        try:
            inputs = Pipeline(_build_pipeline(dataset.pipeline))(images, generator=generator)
        except Exception as exc:
            culprit = blame(exc)
            loc = culprit.component.loc if culprit and culprit.component else f"data.{split}.pipeline"
            what = f"{_who(culprit)} raised {_summary(exc)} on a ({BATCH}, {channels}, {h}, {w}) uint8 batch"
            if known:
                issues.append(SpecIssue(loc, what + _hint(exc)))
            else:
                notes.append(f"data.{split}: not checked: {loc}: {what} (the dataset's image size is not in the "
                             "spec, so that size was a guess)")
            continue
        batches.append(ExampleBatch(split, inputs, labels.clone(), f"a data.{split} batch"))
    return batches, issues, notes


def _build_pipeline(pipeline: Sequence[Any]) -> list[Any]:
    return [build_tree(t)[0] if isinstance(t, ComponentNode) else t for t in pipeline]


def _model_example(model: Any, channels: int, size: tuple[int, int], labels: Tensor) -> ExampleBatch:
    custom = getattr(model, "example_inputs", None)
    if callable(custom):
        args = tuple(custom(BATCH))
        inputs = _map(args[0], _off_meta)
        targets = args[1] if len(args) > 1 and isinstance(args[1], Tensor) else labels
        return ExampleBatch("example", inputs, _off_meta(targets), "the model's example_inputs")
    # Raw 0..255 values as float, like the conformance kit (models take uint8 or float input).
    images = torch.rand((BATCH, channels, *size), generator=torch.Generator().manual_seed(0)) * 255
    return ExampleBatch("example", images, labels, "an example batch of the model's input size")


def _off_meta(t: Tensor) -> Tensor:
    """A CPU tensor for ``t`` (zeros when ``t`` has no data: it was made on the meta device)."""
    return torch.zeros(t.shape, dtype=t.dtype) if t.is_meta else t.cpu()


def _classes(model: Any) -> int | None:
    """Dataset classes the model predicts (``num_classes`` of the model, else of its head)."""
    owner: Any = model if hasattr(model, "num_classes") else getattr(model, "head", None)
    n = getattr(owner, "num_classes", None)
    return n if isinstance(n, int) and not isinstance(n, bool) else None


# ------------------------------------------------------------------------------ running


@contextlib.contextmanager
def _stage_hooks(model: Any, root: ComponentNode) -> Iterator[dict[str, Any]]:
    """Record the first output of the backbone and neck while the step runs."""
    seen: dict[str, Any] = {}
    handles = []
    for name in ("backbone", "neck"):
        module, node = getattr(model, name, None), root.child(name)
        if isinstance(module, nn.Module) and node is not None:
            def hook(_m: nn.Module, _args: Any, out: Any, key: str = name) -> None:
                seen.setdefault(key, out)

            handles.append(module.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def run_steps(
    spec: ValidatedSpec,
    model: Any,
    batches: Sequence[ExampleBatch],
    device: str,
    compare: Callable[[ComponentNode, Any, str], list[SpecIssue]],
) -> StepResult:
    """Run each batch's step on ``model`` (already on ``device``); collect stages and issues.

    Args:
        spec: The validated spec.
        model: The built model (meta or CPU).
        batches: From :func:`example_batches`.
        device: ``"cpu"`` or ``"meta"``.
        compare: ``compare(node, features, source)``: the stage-width check (an
            ``in_channels`` that does not match what the previous stage outputs).

    """
    result = StepResult(device)
    root = spec.model
    # A retriever's head classes are its training identities; evaluation only encodes queries.
    retriever = getattr(model, "eval_task", None) == "retrieval"
    classes = None if retriever else _classes(model)
    train_structure: Any = None
    failures: set[tuple[str, str, str]] = set()
    for batch in batches:
        inputs = _map(batch.inputs, lambda t: t.to(device))
        labels = batch.labels.to(device)
        evaluating = batch.split == "val"
        call = _call_name(evaluating=evaluating, classes=classes, retriever=retriever)
        with _stage_hooks(model, root) as seen:
            try:
                out = _step(model, inputs, labels, evaluating=evaluating, classes=classes, retriever=retriever)
            except Exception as exc:
                issue = _stage_issue(root, seen, compare) or _failure(exc, batch, call, train_structure)
                key = (issue.loc, type(exc).__name__, str(exc))
                if key not in failures:  # the same fault in both steps is reported once
                    failures.add(key)
                    result.issues.append(issue)
                result.cause = result.cause or exc
                continue
        problem = _check_output(out, evaluating=evaluating, classes=classes, retriever=retriever)
        if problem:
            result.issues.append(SpecIssue(root.loc, f"{problem} ({call} on {batch.source})"))
            continue
        if evaluating and retriever and result.features is None:
            result.features = out  # (N, D): exactly what its gallery must hold
        if batch.split != "val":
            train_structure = _structure(batch.inputs)
            if not result.stages:
                result.stages = _stages(model, root, seen, classes, result, compare)
        result.records.append(StepRecord(batch.split, call, describe_batch(inputs), describe_batch(out)))
    return result


def _call_name(*, evaluating: bool, classes: int | None, retriever: bool) -> str:
    if not evaluating:
        return "model.loss (training mode)"
    if retriever:
        return "model.extract_feat (eval mode)"
    return "model.predict (eval mode)" if classes is not None else "model.loss (eval mode)"


def _step(model: Any, inputs: Any, labels: Tensor, *, evaluating: bool, classes: int | None,
          retriever: bool) -> Any:
    if not evaluating:
        model.train()
        return model.loss(inputs, labels)
    model.eval()
    with torch.no_grad():
        if retriever:  # what retrieval evaluation runs on queries (and gallery items)
            return features_of(model, inputs)
        return model.predict(inputs) if classes is not None else model.loss(inputs, labels)


def _check_output(out: Any, *, evaluating: bool, classes: int | None, retriever: bool) -> str | None:
    """What the trainer or the evaluator would choke on in the step's result."""
    if evaluating and retriever:
        return None  # features_of already refused anything but (N, D) features
    if evaluating and classes is not None:
        scores = out.get("scores") if isinstance(out, Mapping) else None
        if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.shape[0] != BATCH:
            return (f"predict() returned {describe_batch(out)}; evaluation reads its 'scores' entry, "
                    f"(N, C) = ({BATCH}, {classes}) class scores")
        if scores.shape[1] != classes:
            return f"predict() returned {scores.shape[1]} scores per sample but the model has num_classes = {classes}"
        return None
    loss = out.get("loss") if isinstance(out, Mapping) else None
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        return (f"loss() returned {describe_batch(out)}; the trainer optimises its 'loss' entry, "
                "a 0-dim tensor (other entries are only logged)")
    return None


def _stages(model: Any, root: ComponentNode, seen: Mapping[str, Any], classes: int | None, result: StepResult,
            compare: Callable[[ComponentNode, Any, str], list[SpecIssue]]) -> list[tuple[str, str]]:
    """(spec path, output) of backbone, neck and (for classifiers) the head's predict."""
    stages: list[tuple[str, str]] = []
    feats: Any = None
    for name in ("backbone", "neck"):
        node = root.child(name)
        if node is not None and name in seen:
            feats = seen[name]
            stages.append((node.loc, describe_batch(feats)))
    result.features = feats
    head, head_node = getattr(model, "head", None), root.child("head")
    if classes is not None and feats is not None and head_node is not None and head is not None \
            and hasattr(head, "predict"):
        model.eval()
        try:
            with torch.no_grad():
                stages.append((head_node.loc, describe_batch(head.predict(feats))))
        except Exception as exc:
            mismatch = compare(head_node, feats, _source(root))
            result.issues.append(mismatch[0] if mismatch else _failure(exc, None, f"{head_node.loc}.predict", None))
            result.cause = result.cause or exc
    return stages


def _source(root: ComponentNode) -> str:
    parts = [f"{n.loc} ({n.type_name})" for n in (root.child("backbone"), root.child("neck")) if n is not None]
    return " through ".join(parts) or root.loc


def _stage_issue(root: ComponentNode, seen: Mapping[str, Any],
                 compare: Callable[[ComponentNode, Any, str], list[SpecIssue]]) -> SpecIssue | None:
    """A width mismatch between recorded stages explains a failed step better than its error."""
    backbone, neck, head = root.child("backbone"), root.child("neck"), root.child("head")
    if backbone is None or "backbone" not in seen:
        return None
    source = f"{backbone.loc} ({backbone.type_name})"
    if neck is not None:
        found = compare(neck, seen["backbone"], source)
        if found:
            return found[0]
        if "neck" not in seen:
            return None
        source += f" through {neck.loc} ({neck.type_name})"
    if head is not None:
        found = compare(head, seen["neck" if neck is not None else "backbone"], source)
        if found:
            return found[0]
    return None


# ------------------------------------------------------------------------------ messages


def _summary(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, PretrainError) else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _hint(exc: BaseException) -> str:
    hint = exc.hint if isinstance(exc, PretrainError) else None
    return f". {hint}" if hint else ""


def _who(culprit: Culprit | None) -> str:
    return culprit.describe(with_loc=False) if culprit is not None else "the model"


def _failure(exc: BaseException, batch: ExampleBatch | None, call: str, train_structure: Any) -> SpecIssue:
    """The issue for a step that raised: at the raising component's spec path, naming its distribution."""
    culprit = blame(exc)
    component = culprit.component if culprit is not None else None
    loc = component.loc if component is not None else "model"
    where = f" (during {call}" + (f" on {batch.source} {describe_batch(batch.inputs)})" if batch is not None else ")")
    msg = f"{_who(culprit)} raised {_summary(exc).rstrip('.')}{where}"
    if batch is not None and batch.split == "val" and train_structure is not None \
            and _structure(batch.inputs) != train_structure:
        # The same model accepted data.train's batches: data.val's pipeline is what differs.
        return SpecIssue("data.val", f"the model's step works on data.train batches but not on data.val's "
                         f"({describe_batch(batch.inputs)}): {loc}: {msg}{_hint(exc)}; make data.val.pipeline "
                         "produce the same kind of batch as data.train.pipeline (e.g. the same MultiView "
                         "views or mask generator)")
    return SpecIssue(loc, msg + _hint(exc))


def meta_limited(result: StepResult) -> bool:
    """Whether a failed meta pass failed only because meta tensors have no values."""
    return result.cause is not None and is_meta_limitation(result.cause)
