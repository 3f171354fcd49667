"""Everything ``pretrain validate`` checks about a model, and ``train``/``eval`` check before they start.

:func:`check_model` runs, in order:

1. the static checks (:func:`pretrain.assembly.shapes.check_static`): every component
   built on the meta device, loss target kinds against their heads, the model's
   declared data requirements (views, batch size vs. queue) against ``[data]``;
2. the steps (:mod:`pretrain.engine.step_check`): the training step on a ``data.train``
   batch and the evaluation step on a ``data.val`` batch, both made by the spec's own
   pipelines (or the model's example input without ``[data]``), on real CPU tensors
   for small models and on the meta device for large ones (repeated on the CPU when
   the meta device cannot run them). A component class whose code runs only on an
   accelerator opts out with ``skip_step_check: ClassVar[str] = "why"``; the report
   then notes that the steps were not run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pretrain.assembly.assemble import build_tree
from pretrain.assembly.shapes import ShapeReport, build_issue, check_static, compare_width
from pretrain.assembly.shapes import input_size as input_size_of
from pretrain.engine.step_check import (
    CPU_MAX_PARAMS,
    CPU_MAX_PIXELS,
    FALLBACK_MAX_PARAMS,
    ExampleBatch,
    StepResult,
    example_batches,
    meta_limited,
    run_steps,
)
from pretrain.errors import PretrainError, SpecIssue
from pretrain.spec.validate import ComponentNode, ValidatedSpec

__all__ = ["DEVICES", "check_model"]

#: Where the steps may run (``pretrain validate --check-on``).
DEVICES = ("auto", "cpu", "meta")


def check_model(
    spec: ValidatedSpec, *, input_size: Sequence[int] | None = None, device: str = "auto",
    training: bool = True,
) -> ShapeReport:
    """Build the model on ``meta``, check it statically, then run its steps once on example batches.

    Args:
        spec: A validated spec.
        input_size: ``(H, W)`` of the input when the spec has no ``[data]`` (default: the
            backbone's ``img_size``, its class's ``default_input_size``, or 224).
        device: Where the steps run: ``auto`` (the CPU up to
            :data:`~pretrain.engine.step_check.CPU_MAX_PARAMS` parameters, else meta),
            ``cpu`` or ``meta``.
        training: Run the training step too (``False`` for ``eval``/``embed``, which only
            run the model in eval mode: a headless retriever evaluates but cannot train).

    Returns:
        A report with every issue found (each with its spec path), the parameter
        counts, the steps that ran and notes on what could not be checked.

    Raises:
        ValueError: Unknown ``device``.

    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    static = check_static(spec)
    report = static.report
    if static.model is None or static.blocking:  # the steps would only fail the same way
        return report
    opted_out = [(node, getattr(node.cls, "skip_step_check", None)) for node in spec.model.walk()]
    opted_out = [(node, reason) for node, reason in opted_out if reason]
    if opted_out:  # e.g. code that only runs on CUDA: neither the CPU nor meta can run the steps
        node, reason = opted_out[0]
        report.notes.append(f"the steps were not run: {node.loc} ({node.type_name}) opts out ({reason})")
        return report
    size = input_size_of(spec, input_size)
    with torch.random.fork_rng(devices=[]), _one_thread():  # leave the caller's RNG stream untouched
        batches, issues, notes = example_batches(
            spec, static.model, size, skip=(*static.skip_splits, *(() if training else ("train",))))
        report.issues += issues
        report.notes += notes
        report.input_shape = _first_shape(batches[0].inputs) if batches else ()
        if not batches:
            return report
        params = report.params
        chosen = device if device != "auto" else _auto_device(params, batches)
        result = _run(spec, chosen, static.model, batches)
        if device == "auto" and result.device == "meta" and result.cause is not None:
            meta_error = _summary(result.cause)
            if params <= FALLBACK_MAX_PARAMS:
                result = _run(spec, "cpu", None, batches)
                report.notes.append(f"the meta device could not run the steps ({meta_error}), so they ran on "
                                    "the CPU")
            elif meta_limited(result):
                report.notes.append(
                    f"the steps were not checked: the meta device cannot run them ({meta_error}) and the "
                    f"model is too large for a CPU pass ({params:,} parameters); run `pretrain validate "
                    "--check-on cpu` to check them anyway")
                result = StepResult("meta")
    report.issues += result.issues
    report.issues += gallery_width_issues(spec, result.features)
    report.stages, report.steps, report.device = result.stages, result.records, result.device
    report.cause = report.cause or result.cause
    return report


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread while the steps run.

    Two-sample batches gain nothing from more, and on a busy machine competing threads
    make them several times slower (measured: 0.07 s vs 0.4 s for the seed spec's step).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _first_shape(x: Any) -> tuple[int, ...]:
    if isinstance(x, tuple) and hasattr(x, "mask"):  # Masked(images, mask)
        x = x[0]
    if isinstance(x, list) and x:
        x = x[0]
    return tuple(int(d) for d in x.shape) if isinstance(x, torch.Tensor) else ()


def _largest_view(x: Any) -> int:
    if isinstance(x, tuple) and hasattr(x, "mask"):
        x = x[0]
    views = x if isinstance(x, list) else [x]
    return max((int(v.shape[-1]) * int(v.shape[-2]) for v in views if isinstance(v, torch.Tensor) and v.dim() >= 2),
               default=0)


def _auto_device(params: int, batches: Sequence[ExampleBatch]) -> str:
    """The CPU for small models (fast, and any code runs), meta for large ones."""
    pixels = max(_largest_view(b.inputs) for b in batches)
    return "cpu" if params <= CPU_MAX_PARAMS and pixels <= CPU_MAX_PIXELS else "meta"


def _run(spec: ValidatedSpec, device: str, meta_model: Any, batches: Sequence[ExampleBatch]) -> StepResult:
    """Run the steps on ``device``; the CPU gets a freshly built model with real tensors."""
    model = meta_model
    if device == "cpu":
        torch.manual_seed(0)
        try:
            model, built = build_tree(spec.model, init=False)
        except PretrainError as exc:
            return StepResult("cpu", issues=[build_issue(exc)], cause=exc)
        _simulate_pretrained(spec.model, built)
    return run_steps(spec, model, batches, device, compare_width)


def _simulate_pretrained(root: ComponentNode, built: Mapping[int, Any]) -> None:
    """Components with a ``Pretrained`` rule see a load of their own state, as training gives them one.

    Nothing is read from disk (the steps check shapes and code paths, not weights),
    but a component that refuses to run on weights nobody loaded (a frozen tokenizer)
    must not fail the check because of that.
    """
    for node in root.walk():
        rules = node.init or getattr(node.cls, "default_init", None) or []
        module = built.get(id(node))
        if isinstance(module, nn.Module) and any(_rule_type(r) == "Pretrained" for r in rules):
            with contextlib.suppress(Exception):
                module.load_state_dict(module.state_dict(), strict=False)


def _rule_type(rule: Any) -> Any:
    return rule.get("type") if isinstance(rule, Mapping) else getattr(rule, "type", None)


def _summary(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    text = (exc.message if isinstance(exc, PretrainError) else str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def embeddings_width(path: str) -> int | None:
    """The feature width of an embeddings file, from its header alone (None if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            shape = f.get_slice("features").get_shape()
    except Exception:  # not ours, damaged: loading it reports that in full
        return None
    return int(shape[1]) if len(shape) == 2 else None


def gallery_width_issues(spec: ValidatedSpec, features: Any) -> list[SpecIssue]:
    """A saved gallery (``[data.gallery] embeddings = ...``) must be as wide as the model's features."""
    from pretrain.spec.data_section import GalleryFile

    gallery = getattr(spec.sections.get("data"), "gallery", None)
    if not isinstance(gallery, GalleryFile) or features is None:
        return []
    last = features[-1] if isinstance(features, tuple | list) and features else features
    if not isinstance(last, torch.Tensor) or last.dim() < 2:
        return []
    have = int(last.shape[-1] if last.dim() == 3 else last.shape[1])
    width = embeddings_width(gallery.path)
    if width is None or width == have:
        return []
    return [SpecIssue(f"{gallery.loc}.embeddings", f"{gallery.path} holds {width}-wide features, but the model "
                      f"outputs {have}; embed the gallery with this model (`pretrain embed ... --split gallery`)")]
