"""The static model checks of ``pretrain validate`` (and of ``train``/``eval`` before anything is created).

The model is built on the ``meta`` device (no weight memory, no init work), loss
target kinds are matched to their heads, and the model's declared data requirements
are checked against ``[data]``. The training and evaluation steps run on top of this
in :mod:`pretrain.engine.preflight`, which uses the width comparison here, so that a
mismatch names both spec paths and both numbers, e.g.::

    model.head.in_channels: is 256, but model.backbone (ResNet_CIFAR) outputs 512 channels
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pretrain.assembly.assemble import build_on_meta, failed_origin
from pretrain.assembly.data_checks import data_requirement_issues
from pretrain.errors import PretrainError, SpecIssue
from pretrain.spec.limits import max_params, params_over_ceiling
from pretrain.spec.validate import ComponentNode, ValidatedSpec

__all__ = ["ShapeReport", "StaticCheck", "build_issue", "check_static", "compare_width", "input_size", "stage_output"]


@dataclass
class ShapeReport:
    """Result of the model checks (:func:`pretrain.engine.preflight.check_model`).

    Attributes:
        issues: Every problem found, each with its spec path.
        params: Parameters of the model.
        trainable: Parameters that require grad.
        input_shape: Shape of the first example batch's images.
        stages: ``(spec path, output)`` of backbone, neck and head.
        steps: The steps that ran (split, call, inputs, output).
        device: Where the steps ran (``cpu`` or ``meta``).
        notes: What was not checked, and why.
        cause: The exception behind the first issue, if one raised (``--debug`` shows it).

    """

    issues: list[SpecIssue]
    params: int
    trainable: int
    input_shape: tuple[int, ...]
    stages: list[tuple[str, str]]  # (spec path, output shape description)
    steps: list[Any] = field(default_factory=list)  # pretrain.engine.step_check.StepRecord
    device: str = "meta"
    notes: list[str] = field(default_factory=list)
    cause: BaseException | None = None


def stage_output(value: Any) -> str:
    """``(2, 512, 4, 4)``, ``tuple[(2, 512)]``: a stage's output for messages."""
    import torch

    if isinstance(value, torch.Tensor):
        return "(" + ", ".join(str(d) for d in value.shape) + ")" if value.dim() else "scalar"
    if isinstance(value, (tuple, list)):
        return "tuple[" + ", ".join(stage_output(v) for v in value) + "]"
    return type(value).__name__


def _channels(value: Any) -> int | None:
    """Channel count of a stage output: dim 1 of (N, C) / (N, C, H, W), last dim of (N, L, C)."""
    import torch

    if isinstance(value, (tuple, list)) and value:
        value = value[-1]
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        return None
    return int(value.shape[-1] if value.dim() == 3 else value.shape[1])


def input_size(spec: ValidatedSpec, override: Sequence[int] | None) -> tuple[int, int]:
    """``(H, W)`` of the model's input: ``override``, ``data.image_size``, the backbone's, or 224."""
    if override:
        size = list(override)
    else:
        data = spec.raw.get("data")
        size_value = data.get("image_size") if isinstance(data, Mapping) else None
        backbone = spec.model.child("backbone")
        if size_value is None and backbone is not None:
            # A backbone's own `img_size` field, else its class's typical input size.
            size_value = backbone.params.get("img_size") or getattr(backbone.cls, "default_input_size", None)
        if size_value is None:
            size_value = 224
        size = [size_value] if isinstance(size_value, int) else list(size_value)
    if len(size) == 1:
        size = size * 2
    return int(size[0]), int(size[1])


@dataclass
class StaticCheck:
    """What :func:`check_static` found, and the meta-built model it found it on."""

    report: ShapeReport
    model: Any = None
    built: dict[int, Any] = field(default_factory=dict)
    skip_splits: tuple[str, ...] = ()  # splits whose data requirements already failed
    blocking: bool = False  # an issue every step would run into (a loss that cannot take its targets)


def check_static(spec: ValidatedSpec) -> StaticCheck:
    """The checks that need no forward pass: meta build, loss target kinds, data requirements.

    Every component is built on the meta device (as training does before allocating
    weights), each loss's target kind is matched to what its head supplies, and the
    model's declared data requirements (views per sample, batch size vs. queue) are
    checked against ``[data]`` (:mod:`pretrain.assembly.data_checks`). The steps that
    run the model come on top, in :func:`pretrain.engine.preflight.check_model`.
    """
    root = spec.model
    try:
        model, built = build_on_meta(root)
    except PretrainError as exc:
        return StaticCheck(ShapeReport([build_issue(exc)], 0, 0, (), [], cause=exc))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ceiling = max_params()
    if params > ceiling:  # before any step, which is slow for absurd models
        report = ShapeReport([SpecIssue(root.loc, params_over_ceiling(params, ceiling))], params, trainable, (), [])
        return StaticCheck(report, model, built, (), blocking=True)
    issues = _check_targets(root, built, model)
    blocking = bool(issues)
    declared = data_requirement_issues(spec)
    for found in declared.values():
        issues += found
    report = ShapeReport(issues, params, trainable, (), [])
    return StaticCheck(report, model, built, tuple(declared), blocking)


def build_issue(exc: PretrainError) -> SpecIssue:
    """A build failure as one issue at the failing component's spec path, naming its distribution."""
    origin = failed_origin(exc)
    message = exc.message
    loc = ""
    if origin is not None and message.startswith(f"{origin.loc}: "):
        loc, message = origin.loc, message[len(origin.loc) + 2:]
    else:
        head, _, rest = message.partition(" ")
        if head.startswith("model") and "." in head and rest and " " not in head:
            loc, message = head.rstrip(":"), rest  # "model.feat_dim is 16, but ..."
        elif origin is not None:
            loc = origin.loc
        if origin is not None:
            r = origin.record
            by = "registered in this process" if r.source == "runtime" else f"from {r.distribution} {r.version}"
            message += f" (raised while building {origin.type_name}, {by})"
    if exc.hint:
        message += f". {exc.hint}"
    return SpecIssue(loc, message)


def compare_width(node: ComponentNode, feats: Any, source: str) -> list[SpecIssue]:
    """``node.in_channels`` against the width of ``feats`` (what ``source`` outputs)."""
    # Some components use `in_channels` for something else (MAE's head: image channels).
    if not getattr(node.cls, "shape_check_in_channels", True):
        return []
    expected = node.params.get("in_channels")
    actual = _channels(feats)
    if isinstance(expected, int) and actual is not None and expected != actual:
        return [
            SpecIssue(
                f"{node.loc}.in_channels",
                f"is {expected}, but {source} outputs {actual} channels "
                f"(shape {stage_output(feats)}); set {node.loc}.in_channels = {actual}",
            )
        ]
    return []


def _check_targets(root: ComponentNode, built: Mapping[int, Any], model: Any) -> list[SpecIssue]:
    """A loss must accept the target kind its head (and the model's batch augments) supply."""
    issues: list[SpecIssue] = []
    dense_only = bool(getattr(model, "produces_dense_targets", False))
    for node in root.walk():
        supplies = getattr(node.cls, "supplies_targets", None)
        if supplies is None:
            continue
        for name, child in node.children.items():
            if not isinstance(child, ComponentNode) or child.kind != "loss":
                continue
            loss = built.get(id(child))
            wants = getattr(loss, "target_kind", "both")
            offered = {"dense"} if dense_only else set(supplies)
            if wants != "both" and wants not in offered:
                why = (
                    f"{root.loc} has batch augments (Mixup/CutMix) that make dense targets"
                    if dense_only
                    else f"{node.loc} ({node.type_name}) supplies {' or '.join(sorted(offered))} targets"
                )
                issues.append(
                    SpecIssue(
                        f"{node.loc}.{name}",
                        f"{child.type_name} expects {wants} targets, but {why}; "
                        "pick a loss that accepts them",
                    )
                )
    return issues
