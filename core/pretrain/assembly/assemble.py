"""Model assembly: turn validated component trees into modules, then initialise weights.

Children are constructed first (they are ``__init__`` arguments of their parent).
Weight init then runs top-down like MMEngine: each component's own rules (its spec
``init`` or its class ``default_init``) before its children's, so a child's
defaults win over a parent's blanket rule, and every ``Pretrained`` rule last.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.errors import PretrainError, SpecError
from pretrain.spec.files import load_spec
from pretrain.spec.validate import ComponentNode, ValidatedSpec, ValidationContext, validate_spec

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["build", "build_from_spec", "build_model", "build_node", "build_tree"]


def _construct(node: ComponentNode, built: dict[int, Any]) -> Any:
    kwargs = dict(node.params)
    for name, child in node.children.items():
        if isinstance(child, list):
            kwargs[name] = [_construct(c, built) for c in child]
        else:
            kwargs[name] = None if child is None else _construct(child, built)
    try:
        obj = node.cls(**kwargs)
    except PretrainError:
        raise
    except Exception as exc:
        r = node.record
        raise PretrainError(
            f"{node.loc}: building {node.kind} {node.type_name!r} failed: "
            f"{type(exc).__name__}: {exc}",
            hint=(
                f"The spec passed validation, so either a value is out of the range this "
                f"component supports or {r.value} (from {r.distribution} {r.version}) has a "
                "bug; its spec_issues() should have caught this."
            ),
        ) from exc
    built[id(node)] = obj
    return obj


@functools.cache
def _default_rules(cls: type) -> tuple[Any, ...]:
    from pretrain.spec.init_rules import validate_init

    rules = getattr(cls, "default_init", None) or []
    return tuple(validate_init(list(rules)))


def _initialise(root: ComponentNode, built: dict[int, Any], console: Console | None = None) -> None:
    from torch import nn

    from pretrain.assembly.weight_init import apply_init

    order = list(root.walk())
    on_meta = any(
        p.is_meta for p in (built[id(root)].parameters() if isinstance(built[id(root)], nn.Module) else [])
    )
    for pretrained in (False, True):
        if pretrained and on_meta:
            break  # nothing to load into; `validate` checks files separately
        for node in order:
            module = built.get(id(node))
            if not isinstance(module, nn.Module):
                continue
            rules = node.init if node.init is not None else list(_default_rules(node.cls))
            if rules:
                # A user's rules must match; a class default that does not fit this
                # configuration (e.g. no GroupNorm present) is skipped.
                apply_init(
                    module, rules, loc=f"{node.loc}.init", pretrained=pretrained,
                    strict=node.init is not None, console=console,
                )
        if not pretrained:
            for node in reversed(order):
                hook = getattr(built.get(id(node)), "post_init_weights", None)
                if callable(hook):
                    hook()


def build_tree(
    node: ComponentNode, *, init: bool = True, console: Console | None = None
) -> tuple[Any, dict[int, Any]]:
    """Build ``node`` and return it with a map ``id(node) -> built object`` for every node.

    ``console`` receives the table of each ``Pretrained`` rule (else it is logged).
    """
    built: dict[int, Any] = {}
    obj = _construct(node, built)
    if init:
        _initialise(node, built, console)
    return obj, built


def build_node(node: ComponentNode, *, init: bool = True, console: Console | None = None) -> Any:
    """Build a validated component (and its children) and initialise its weights."""
    return build_tree(node, init=init, console=console)[0]


def build_from_spec(kind: str, spec: Mapping[str, Any]) -> Any:
    """Validate and build one component table of ``kind`` (e.g. a head's ``loss``).

    Raises:
        SpecError: The table is invalid (paths are relative to ``kind``).

    """
    ctx = ValidationContext()
    node = ctx.component(kind, spec, kind)
    if ctx.issues or node is None:
        raise SpecError(ctx.issues)
    return build_node(node)


def _seeded(seed: int | None) -> None:
    if seed is not None:
        import torch

        torch.manual_seed(seed)


def build_model(spec: Mapping[str, Any] | ValidatedSpec, *, seed: int | None = None) -> Any:
    """Build the ``model`` of a spec (a mapping with a ``model`` table, or a validated spec).

    Args:
        spec: The whole spec as data, or the result of :func:`pretrain.validate_spec`.
        seed: Seed ``torch`` before building, for deterministic initialisation.

    Returns:
        The model (``torch.nn.Module``), weights initialised.

    Raises:
        SpecError: The spec is invalid.

    """
    validated = spec if isinstance(spec, ValidatedSpec) else validate_spec(spec)
    _seeded(seed)
    return build_node(validated.model)


def build(
    spec: str | Path | Mapping[str, Any], *, overrides: tuple[str, ...] | list[str] = (),
    seed: int | None = None,
) -> Any:
    """Load (file or mapping), validate and build a spec's model in one call.

    Example:
        >>> model = pretrain.build("examples/specs/seed_tutorial.toml")

    Raises:
        SpecError: Invalid spec, with every problem and its path.

    """
    raw = load_spec(spec, overrides)
    source = None if isinstance(spec, Mapping) else str(spec)
    try:
        validated = validate_spec(raw, source=source)
    except SpecError as exc:
        if exc.source is None and source is not None:
            raise SpecError(exc.issues, source=source) from None
        raise
    return build_model(validated, seed=seed)
