"""Spec validation: every error at once, each with its spec path, before anything is built.

A ``type`` is only ever resolved through the registry, never as an import path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pretrain.errors import SpecError, SpecIssue, did_you_mean
from pretrain.registry.plugins import load_plugins
from pretrain.registry.registry import Registry
from pretrain.spec.context import ComponentNode, ValidationContext
from pretrain.spec.sections import Task, check_against_model, validate_sections

__all__ = ["ComponentNode", "ValidatedSpec", "ValidationContext", "spec_num_classes", "spec_task", "validate_spec"]

#: Top-level tables a spec may have. ``model`` is required.
TOP_LEVEL = ("model", "data", "train", "eval", "name", "description")
ENGINE_SECTIONS = ("data", "train", "eval")


@dataclass
class ValidatedSpec:
    """A spec that passed validation.

    Attributes:
        raw: The merged spec as data (what ``spec.toml`` in a run directory holds).
        model: The validated ``model`` component tree.
        sections: Validated engine sections (``data``, ``train``, ``eval``) by name.
        source: File the spec came from, if any.

    """

    raw: dict[str, Any]
    model: ComponentNode
    sections: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


def spec_num_classes(model: ComponentNode) -> int | None:
    """Dataset classes the spec's model predicts, read from its fields (model, else head).

    None when the spec does not say (a self-supervised model, or no ``num_classes``).
    Mirrors :func:`pretrain.engine.evaluate.model_num_classes` on the built model.
    """
    if "num_classes" in model.params:
        value = model.params["num_classes"]
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if getattr(model.cls, "num_classes", 0) is None:  # self-supervised base classes
        return None
    head = model.child("head")
    value = head.params.get("num_classes") if head is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def spec_task(model: ComponentNode) -> Task:
    """What evaluating the spec's model scores: ``retrieval``, ``classification`` or ``selfsup``.

    Mirrors :func:`pretrain.engine.evaluate.model_task` on the built model.
    """
    if getattr(model.cls, "eval_task", None) == "retrieval":
        return "retrieval"
    return "classification" if spec_num_classes(model) is not None else "selfsup"


def validate_spec(
    raw: Mapping[str, Any], *, registry: Registry | None = None, source: str | None = None,
    check_files: bool = True,
) -> ValidatedSpec:
    """Validate a merged spec (see :func:`pretrain.load_spec`).

    Args:
        raw: The spec as data.
        registry: Registry to resolve types in (process-wide by default).
        source: File name for messages.
        check_files: Check that the files the spec names (``Pretrained`` checkpoints)
            exist; turn off to check a spec whose checkpoint another run will write.

    Returns:
        The validated spec.

    Raises:
        SpecError: With every issue found, each with its spec path.

    """
    ctx = ValidationContext(registry, check_files=check_files)
    load_plugins(ctx.registry)
    if not isinstance(raw, Mapping):
        raise SpecError([SpecIssue("", "a spec must be a table/object")], source=source)
    for key in raw:
        if key not in TOP_LEVEL:
            allowed = ", ".join(TOP_LEVEL)
            ctx.add(str(key), f"unknown top-level table{did_you_mean(str(key), TOP_LEVEL)} (allowed: {allowed})")
    for key in ("name", "description"):
        if key in raw and not isinstance(raw[key], str):
            ctx.add(key, "must be a string")
    model = None
    if "model" not in raw:
        ctx.add("model", "required table is missing; a spec needs [model] with a type")
    else:
        model = ctx.component("model", raw["model"], "model")
    sections: dict[str, Any] = {}
    if any(k in raw for k in ENGINE_SECTIONS):
        sections = validate_sections(raw, ctx, check_best=model is None)
        if model is not None:
            topk = model.params.get("topk") if spec_task(model) == "retrieval" else None
            check_against_model(sections, spec_num_classes(model), ctx, task=spec_task(model),
                                model_topk=topk if isinstance(topk, int) else None)
    if ctx.issues or model is None:
        raise SpecError(ctx.issues, source=source)
    return ValidatedSpec(dict(raw), model, sections, source)
