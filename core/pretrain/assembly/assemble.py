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

from pretrain.assembly.blame import Origin, remember
from pretrain.errors import PretrainError, SpecError
from pretrain.spec.files import load_spec
from pretrain.spec.validate import ComponentNode, ValidatedSpec, ValidationContext, validate_spec

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "META_RULE",
    "build",
    "build_from_spec",
    "build_model",
    "build_node",
    "build_on_meta",
    "build_tree",
    "building_on_meta",
    "construction_error",
    "failed_origin",
    "is_meta_limitation",
]


#: What ``__init__`` must not do on the meta device, for error hints and the docs.
META_RULE = (
    "`pretrain validate`, `pretrain train` and `pretrain eval` first build every component on the meta "
    "device (tensors with shapes but no values), so __init__ must not read tensor values: no .item(), "
    ".tolist(), float(t)/int(t) or data-dependent Python such as `if t > 0` on tensors it creates; compute "
    "such numbers with plain Python (e.g. [i * rate / (n - 1) for i in range(n)] instead of "
    "torch.linspace(0, rate, n).tolist())"
)


def is_meta_limitation(exc: BaseException) -> bool:
    """Whether ``exc`` says a meta tensor was asked for its values (or an op has no meta kernel)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return "meta" in text or "unsupported scalartype" in text


def building_on_meta() -> bool:
    """Whether tensors created now land on the meta device (inside ``with torch.device("meta")``)."""
    import torch

    return torch.get_default_device().type == "meta"


def _construct(node: ComponentNode, built: dict[int, Any]) -> Any:
    kwargs = dict(node.params)
    for name, child in node.children.items():
        if isinstance(child, list):
            kwargs[name] = [_construct(c, built) for c in child]
        else:
            kwargs[name] = None if child is None else _construct(child, built)
    try:
        obj = node.cls(**kwargs)
    except PretrainError as exc:
        if failed_origin(exc) is None:  # the innermost component that refused to build
            setattr(exc, _FAILED, Origin(node.loc, node.type_name, node.record))
        raise
    except Exception as exc:
        raise construction_error(node, exc, meta=building_on_meta()) from exc
    built[id(node)] = obj
    remember(obj, node.loc, node.type_name, node.record)
    return obj


_FAILED = "_pretrain_failed_component"


def failed_origin(exc: BaseException) -> Origin | None:
    """The component whose ``__init__`` raised the :class:`PretrainError` ``exc``, if one did."""
    origin = getattr(exc, _FAILED, None)
    return origin if isinstance(origin, Origin) else None


def construction_error(node: ComponentNode, exc: BaseException, *, meta: bool) -> PretrainError:
    """The error for a component whose ``__init__`` raised ``exc`` (``meta``: on the meta device)."""
    r = node.record
    origin = (" (registered in this process)" if r.source == "runtime"
              else f" (from distribution {r.distribution}, version {r.version})")
    where = " on the meta device" if meta else ""
    message = (f"{node.loc}: building {node.kind} {node.type_name!r}{where} failed: {type(exc).__name__}: {exc}")
    if meta and is_meta_limitation(exc):
        hint = f"{r.value}{origin}: {META_RULE}. Run with --debug for the traceback inside the component."
    else:
        hint = (f"The spec passed validation, so {r.value}{origin} rejected these values in its __init__: "
                "check them against its documentation (`pretrain describe "
                f"{node.type_name}`), or run with --debug for the traceback inside the component.")
    error = PretrainError(message, hint=hint)
    setattr(error, _FAILED, Origin(node.loc, node.type_name, node.record))
    return error


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
                    try:
                        hook()
                    except PretrainError:
                        raise
                    except Exception as exc:
                        error = construction_error(node, exc, meta=on_meta)
                        raise PretrainError(error.message.replace("building", "post_init_weights() of", 1),
                                            hint=error.hint) from exc


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


def build_on_meta(node: ComponentNode) -> tuple[Any, dict[int, Any]]:
    """:func:`build_tree` on the meta device, as ``validate``/``train``/``eval`` do first.

    Every tensor gets a shape and no storage: no weight memory, no init work. A
    component whose ``__init__`` reads tensor values fails here (see :data:`META_RULE`).

    Raises:
        PretrainError: A component failed to build; the message starts with its spec path.

    """
    import torch

    with torch.device("meta"):
        return build_tree(node)


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
