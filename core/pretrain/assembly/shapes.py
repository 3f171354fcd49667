"""Cross-component checks on the ``meta`` device: shapes and loss target kinds.

The model is built with meta tensors (no weight memory, no init work) and a
``(2, C, H, W)`` meta batch is pushed through backbone -> neck -> head. A
mismatch names both spec paths and both numbers, e.g.::

    model.head.in_channels: is 256, but model.backbone (ResNet_CIFAR) outputs 512 channels
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pretrain.errors import PretrainError, SpecIssue
from pretrain.spec.limits import max_params, params_over_ceiling
from pretrain.spec.validate import ComponentNode, ValidatedSpec

__all__ = ["ShapeReport", "check_model", "embeddings_width"]


@dataclass
class ShapeReport:
    """Result of :func:`check_model`."""

    issues: list[SpecIssue]
    params: int
    trainable: int
    input_shape: tuple[int, ...]
    stages: list[tuple[str, str]]  # (spec path, output shape description)


def _describe(value: Any) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return "(" + ", ".join(str(d) for d in value.shape) + ")"
    if isinstance(value, (tuple, list)):
        return "tuple[" + ", ".join(_describe(v) for v in value) + "]"
    return type(value).__name__


def _channels(value: Any) -> int | None:
    """Channel count of a stage output: dim 1 of (N, C) / (N, C, H, W), last dim of (N, L, C)."""
    import torch

    if isinstance(value, (tuple, list)) and value:
        value = value[-1]
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        return None
    return int(value.shape[-1] if value.dim() == 3 else value.shape[1])


def _input_size(spec: ValidatedSpec, override: Sequence[int] | None) -> tuple[int, int]:
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


def _loc_type(node: ComponentNode | None) -> str:
    return f"{node.loc} ({node.type_name})" if node else "?"


def check_model(spec: ValidatedSpec, *, input_size: Sequence[int] | None = None) -> ShapeReport:
    """Build the model on ``meta`` and check it end to end.

    Args:
        spec: A validated spec.
        input_size: ``(H, W)`` of the input; default ``data.image_size``, the backbone's
            ``img_size``, or 224.

    Returns:
        A report with every issue found and the parameter counts.

    """
    import torch

    from pretrain.assembly.assemble import build_tree

    issues: list[SpecIssue] = []
    stages: list[tuple[str, str]] = []
    root = spec.model
    try:
        with torch.device("meta"):
            model, built = build_tree(root)
    except PretrainError as exc:
        # The message already starts with the failing component's path.
        return ShapeReport([SpecIssue("", str(exc))], 0, 0, (), [])
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ceiling = max_params()
    if params > ceiling:  # before the forward pass, which is slow for absurd models
        return ShapeReport([SpecIssue(root.loc, params_over_ceiling(params, ceiling))], params, trainable, (), [])
    height, width = _input_size(spec, input_size)
    channels = int(getattr(model, "in_channels", 3) or 3)
    shape = (2, channels, height, width)
    issues += _check_targets(root, built, model)
    backbone_node, neck_node, head_node = (root.child(n) for n in ("backbone", "neck", "head"))
    backbone = getattr(model, "backbone", None)
    if backbone_node is None or backbone is None:
        return ShapeReport(issues, params, trainable, shape, stages)
    x = torch.empty(shape, device="meta")
    try:
        feats = backbone(x)
    except Exception as exc:
        issues.append(SpecIssue(backbone_node.loc, f"forward fails on a {shape} input: {exc}"))
        return ShapeReport(issues, params, trainable, shape, stages)
    stages.append((backbone_node.loc, _describe(feats)))
    source = _loc_type(backbone_node)
    neck = getattr(model, "neck", None)
    if neck_node is not None and neck is not None:
        issues += _compare(neck_node, feats, source)
        try:
            feats = neck(feats)
        except Exception as exc:
            issues.append(SpecIssue(neck_node.loc, f"forward fails on {source}'s output {_describe(feats)}: {exc}"))
            return ShapeReport(issues, params, trainable, shape, stages)
        stages.append((neck_node.loc, _describe(feats)))
        source = f"{source} through {_loc_type(neck_node)}"
    issues += _check_gallery_file(spec, feats, source)
    head = getattr(model, "head", None)
    if head_node is not None and head is not None:
        mismatch = _compare(head_node, feats, source)
        issues += mismatch
        if not mismatch:
            try:
                out = head.predict(feats) if hasattr(head, "predict") else head(feats)
                stages.append((head_node.loc, _describe(out)))
            except Exception as exc:
                issues.append(
                    SpecIssue(head_node.loc, f"forward fails on {source}'s output {_describe(feats)}: {exc}")
                )
    return ShapeReport(issues, params, trainable, shape, stages)


def embeddings_width(path: str) -> int | None:
    """The feature width of an embeddings file, from its header alone (None if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            shape = f.get_slice("features").get_shape()
    except Exception:  # not ours, damaged: loading it reports that in full
        return None
    return int(shape[1]) if len(shape) == 2 else None


def _check_gallery_file(spec: ValidatedSpec, feats: Any, source: str) -> list[SpecIssue]:
    """A saved gallery must have the width of the features the model produces."""
    from pretrain.spec.data_section import GalleryFile

    gallery = getattr(spec.sections.get("data"), "gallery", None)
    if not isinstance(gallery, GalleryFile):
        return []
    width, have = embeddings_width(gallery.path), _channels(feats)
    if width is None or have is None or width == have:
        return []
    return [SpecIssue(f"{gallery.loc}.embeddings", f"{gallery.path} holds {width}-wide features, but {source} "
                      f"outputs {have}; embed the gallery with this model (`pretrain embed ... --split gallery`)")]


def _compare(node: ComponentNode, feats: Any, source: str) -> list[SpecIssue]:
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
                f"(shape {_describe(feats)}); set {node.loc}.in_channels = {actual}",
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
