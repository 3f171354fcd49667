"""Spec validation: every error at once, each with its spec path, before anything is built.

A ``type`` is only ever resolved through the registry, never as an import path.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pretrain._registry import EntryRecord, Registry, get_registry
from pretrain._schema import (
    RESERVED_FIELDS,
    ComponentSchema,
    SchemaDerivationError,
    component_schema,
)
from pretrain.errors import ComponentLookupError, PluginLoadError, SpecError, SpecIssue

__all__ = ["ComponentNode", "ValidatedSpec", "ValidationContext", "validate_spec"]

#: Top-level tables a spec may have. ``model`` is required.
TOP_LEVEL = ("model", "data", "train", "eval", "name", "description")
ENGINE_SECTIONS = ("data", "train", "eval")

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


@dataclass
class ComponentNode:
    """A validated component table, ready to build.

    Attributes:
        kind: Component kind.
        type_name: The ``type`` as written in the spec.
        record: Registry record it resolved to.
        cls: The component class.
        schema: Its derived schema.
        params: Validated plain fields (defaults filled in), passed to ``__init__``.
        children: Nested components by parameter name (node, list of nodes, or None).
        init: Validated ``init`` rules from the spec, or None for the class default.
        loc: Dotted spec path of this table (``model.head``).

    """

    kind: str
    type_name: str
    record: EntryRecord
    cls: type
    schema: ComponentSchema
    params: dict[str, Any]
    children: dict[str, ComponentNode | list[ComponentNode] | None]
    init: list[Any] | None
    loc: str

    def walk(self) -> Iterable[ComponentNode]:
        """This node, then its descendants (pre-order)."""
        yield self
        for child in self.children.values():
            for node in child if isinstance(child, list) else [child]:
                if node is not None:
                    yield from node.walk()

    def child(self, name: str) -> ComponentNode | None:
        """The single nested component ``name`` (None if absent or a list)."""
        value = self.children.get(name)
        return value if isinstance(value, ComponentNode) else None


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


def _loc(*parts: object) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "":
            out += f".{part}" if out else str(part)
    return out


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class ValidationContext:
    """Collects issues while validating; used by the core and by engine sections.

    Args:
        registry: Registry to resolve ``type`` values (the process-wide one by default).

    """

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or get_registry()
        self.issues: list[SpecIssue] = []

    def add(self, loc: str, msg: str) -> None:
        """Record one issue at ``loc``."""
        self.issues.append(SpecIssue(loc, msg))

    def add_pydantic(
        self, exc: ValidationError, prefix: str, known_fields: Sequence[str] = ()
    ) -> None:
        """Record a pydantic error's entries under ``prefix``.

        Union branches of one field are folded into one issue, and unknown keys get a
        did-you-mean over ``known_fields``.
        """
        by_field: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for err in exc.errors(include_url=False):
            parts = tuple(p for p in err["loc"] if not _is_union_tag(p))
            by_field.setdefault(parts, []).append(dict(err))
        for parts, errs in by_field.items():
            loc = _loc(prefix, *parts)
            first = errs[0]
            if first["type"] == "extra_forbidden":
                key = str(parts[-1]) if parts else "?"
                parent = _loc(prefix, *parts[:-1])
                fields = ", ".join(known_fields) or "none"
                self.add(
                    _loc(parent, key),
                    f"unknown field{_suggest(key, known_fields)} (accepted fields: {fields})",
                )
            elif first["type"] == "missing":
                self.add(loc, "required field is missing")
            else:
                msgs = list(dict.fromkeys(e["msg"] for e in errs))
                got = first.get("input")
                self.add(loc, " / ".join(msgs) + f" (got {_short.repr(got)})")

    def component(self, kind: str, value: Any, loc: str) -> ComponentNode | None:
        """Validate one component table of ``kind`` at ``loc``; None if it failed."""
        if not isinstance(value, Mapping):
            self.add(
                loc,
                f"expected a table with a 'type' key (a {kind} spec), got {_short.repr(value)}",
            )
            return None
        type_name = value.get("type")
        if type_name is None:
            names = ", ".join(self.registry.names(kind)[:12])
            self.add(_loc(loc, "type"), f"missing; choose a {kind} type, e.g. one of: {names}")
            return None
        if not isinstance(type_name, str):
            self.add(_loc(loc, "type"), f"must be a string, got {_short.repr(type_name)}")
            return None
        try:
            record = self.registry.resolve(kind, type_name)
            cls = self.registry.load(record)
            schema = component_schema(cls, kind, record.name)
        except (ComponentLookupError, PluginLoadError) as exc:
            self.add(_loc(loc, "type"), f"{exc.message}. {exc.hint}" if exc.hint else exc.message)
            return None
        except SchemaDerivationError as exc:  # pragma: no cover - the registry validator catches it
            self.add(_loc(loc, "type"), f"{kind} {type_name!r} is not a valid component: {exc}")
            return None
        return self._fields(kind, type_name, record, cls, schema, value, loc)

    def component_of_class(
        self, kind: str, cls: type, value: Mapping[str, Any], loc: str, *, name: str | None = None
    ) -> ComponentNode | None:
        """Validate ``value`` against ``cls`` directly, without resolving its ``type``.

        For classes that are not registered (notebooks, the conformance kit, tests).
        """
        name = name or cls.__name__
        try:
            schema = component_schema(cls, kind, name)
        except SchemaDerivationError as exc:
            self.add(loc, f"{kind} {name!r} is not a valid component: {exc}")
            return None
        record = EntryRecord(kind, name, f"{cls.__module__}:{cls.__qualname__}", "__runtime__", "0", "runtime")
        return self._fields(kind, name, record, cls, schema, value, loc)

    def components(self, kind: str, values: Any, loc: str) -> list[ComponentNode]:
        """Validate a list of component tables; failed entries are left out."""
        if not isinstance(values, list):
            self.add(loc, f"expected a list of {kind} tables, got {_short.repr(values)}")
            return []
        nodes = [self.component(kind, v, _loc(loc, i)) for i, v in enumerate(values)]
        return [n for n in nodes if n is not None]

    def _fields(
        self,
        kind: str,
        type_name: str,
        record: EntryRecord,
        cls: type,
        schema: ComponentSchema,
        value: Mapping[str, Any],
        loc: str,
    ) -> ComponentNode | None:
        before = len(self.issues)
        fields = {k: v for k, v in value.items() if k not in RESERVED_FIELDS}
        known = schema.field_names()
        params: dict[str, Any] = {}
        try:
            instance = schema.model.model_validate(fields)
        except ValidationError as exc:
            self.add_pydantic(exc, loc, known)
            instance = None
        if instance is not None:
            params = {
                name: getattr(instance, name)
                for name in schema.model.model_fields
                if name not in schema.nested
            }
        children: dict[str, ComponentNode | list[ComponentNode] | None] = {}
        for name, nested in schema.nested.items():
            sub = value.get(name, nested.default)
            sub_loc = _loc(loc, name)
            if sub is None:
                if nested.required and name in value:
                    self.add(sub_loc, f"a {nested.kind} is required here")
                children[name] = None
            elif nested.many:
                children[name] = self.components(nested.kind, list(sub) if isinstance(sub, tuple) else sub, sub_loc)
            else:
                children[name] = self.component(nested.kind, sub, sub_loc)
        init_rules = None
        if "init" in value:
            init_rules = self._init_rules(value["init"], _loc(loc, "init"))
        if instance is not None and hasattr(cls, "spec_issues"):
            try:
                for field_name, msg in cls.spec_issues(params):
                    self.add(_loc(loc, field_name), msg)
            except Exception as exc:
                self.add(loc, f"{type_name}.spec_issues failed: {type(exc).__name__}: {exc}")
        if len(self.issues) > before:
            return None
        return ComponentNode(kind, type_name, record, cls, schema, params, children, init_rules, loc)

    def _init_rules(self, value: Any, loc: str) -> list[Any] | None:
        from pretrain.init import validate_init

        if isinstance(value, Mapping):
            value = [value]
        try:
            return list(validate_init(value))
        except ValidationError as exc:
            self.add_pydantic(exc, loc)
            return None


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union member (``int``, ``tuple[int, ...]``, ``literal['a']``,
    # ``function-after[...]``) into ``loc``; users think in spec keys only.
    return (isinstance(part, str) and any(c in part for c in "[]() ,'")) or part in (
        "int", "float", "str", "bool", "list", "tuple", "dict", "none", "json-or-python"
    )


def validate_spec(
    raw: Mapping[str, Any], *, registry: Registry | None = None, source: str | None = None
) -> ValidatedSpec:
    """Validate a merged spec (see :func:`pretrain.load_spec`).

    Args:
        raw: The spec as data.
        registry: Registry to resolve types in (process-wide by default).
        source: File name for messages.

    Returns:
        The validated spec.

    Raises:
        SpecError: With every issue found, each with its spec path.

    """
    from pretrain._plugins import load_plugins

    ctx = ValidationContext(registry)
    load_plugins(ctx.registry)
    if not isinstance(raw, Mapping):
        raise SpecError([SpecIssue("", "a spec must be a table/object")], source=source)
    for key in raw:
        if key not in TOP_LEVEL:
            allowed = ", ".join(TOP_LEVEL)
            ctx.add(str(key), f"unknown top-level table{_suggest(str(key), TOP_LEVEL)} (allowed: {allowed})")
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
        from pretrain.engine.spec import validate_sections

        sections = validate_sections(raw, ctx)
    if ctx.issues or model is None:
        raise SpecError(ctx.issues, source=source)
    return ValidatedSpec(dict(raw), model, sections, source)
