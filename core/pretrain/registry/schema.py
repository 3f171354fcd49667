"""Derive a component's schema from its typed ``__init__`` (or an explicit pydantic model).

A plugin author writes an ordinary class::

    class MyHead(BaseHead):
        def __init__(self, *, in_channels: int, num_classes: Annotated[int, Field(gt=0)],
                     loss: Annotated[nn.Module, ComponentRef("loss")] = CE_DEFAULT) -> None:

and gets a pydantic model (``extra="forbid"``) for the plain fields, a list of nested
component fields (validated recursively by ``pretrain.spec.validate``), field
descriptions from the Google-style ``Args:`` docstring, and a JSON Schema.
A class may instead set ``config_model`` to an explicit pydantic model.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model
from pydantic.fields import FieldInfo

from pretrain.registry.kinds import KIND_INFO, KINDS, ComponentRef
from pretrain.registry.records import EntryRecord

__all__ = [
    "RESERVED_FIELDS",
    "ComponentSchema",
    "NestedField",
    "SchemaDerivationError",
    "check_component_contract",
    "component_schema",
    "parse_docstring",
]

#: Keys every component table may use that the component itself never sees.
RESERVED_FIELDS = ("type", "init")


class SchemaDerivationError(TypeError):
    """The class's signature cannot be turned into a schema."""


@dataclass(frozen=True)
class NestedField:
    """A constructor parameter that takes another component (or a list of them)."""

    name: str
    kind: str
    many: bool
    required: bool
    default: Any  # a spec mapping, a list of them, or None
    description: str


@dataclass(frozen=True)
class ComponentSchema:
    """Everything the validator, ``describe`` and ``schema`` need about one class."""

    cls: type
    kind: str
    name: str
    model: type[BaseModel]
    nested: dict[str, NestedField]
    summary: str
    doc: str
    descriptions: dict[str, str]
    explicit: bool

    @property
    def takes_init(self) -> bool:
        """Whether the table accepts ``init`` rules: only kinds whose components own weights."""
        return KIND_INFO[self.kind].weights

    def field_names(self) -> list[str]:
        """Every accepted key except ``type``."""
        return [*self.model.model_fields, *(["init"] if self.takes_init else [])]

    def json_schema(self, qualified: str | None = None) -> dict[str, Any]:
        """JSON Schema of this component's table; nested kinds are ``#/$defs/<kind>`` refs."""
        schema = self.model.model_json_schema(ref_template="#/$defs/{model}")
        names = [self.name] + ([qualified] if qualified and qualified != self.name else [])
        props = {"type": {"enum": names, "description": f"{self.kind} type"}}
        for key, prop in schema.get("properties", {}).items():
            if key in self.nested:
                nested = self.nested[key]
                ref = {
                    **_ref_for(nested.kind, nested.many),
                    "description": prop.get("description", self.descriptions.get(key, "")),
                }
                if nested.default is not None:
                    ref["default"] = nested.default
                prop = ref  # noqa: PLW2901 - swap the pydantic marker for the $ref
            props[key] = prop
        if self.takes_init:
            props["init"] = {"$ref": "#/$defs/init_rules"}
        schema["properties"] = props
        schema["required"] = ["type", *schema.get("required", [])]
        schema["title"] = self.name
        schema["description"] = self.summary
        schema["additionalProperties"] = False
        return schema


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (summary, {arg: description})."""
    if not doc:
        return "", {}
    text = inspect.cleandoc(doc)
    summary = text.split("\n\n", 1)[0].replace("\n", " ").strip()
    descriptions: dict[str, str] = {}
    lines = text.splitlines()
    in_args = False
    current: str | None = None
    base_indent = 0
    for line in lines:
        stripped = line.strip()
        if re.fullmatch(r"(Args|Arguments|Parameters|Keyword Args):", stripped):
            in_args, current = True, None
            continue
        if not in_args:
            continue
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:  # next section ("Returns:", "Example:")
            in_args = False
            continue
        match = re.match(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", stripped)
        if match and (current is None or indent <= base_indent):
            current, base_indent = match.group(1).lstrip("*"), indent
            descriptions[current] = match.group(3).strip()
        elif current is not None:
            descriptions[current] = (descriptions[current] + " " + stripped).strip()
    return summary, descriptions


def _strip_annotated(tp: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp, metadata = args[0], [*metadata, *args[1:]]
    return tp, metadata


def _kind_of_type(tp: Any) -> str | None:
    tp, metadata = _strip_annotated(tp)
    for meta in metadata:
        if isinstance(meta, ComponentRef):
            return meta.kind
    if isinstance(tp, type):
        kind = getattr(tp, "component_kind", None)
        if isinstance(kind, str) and kind in KINDS:
            return kind
    return None


def _nested_kind(annotation: Any) -> tuple[str, bool, bool] | None:
    """Return ``(kind, many, optional)`` when ``annotation`` is a component reference."""
    tp, _ = _strip_annotated(annotation)
    kind = _kind_of_type(annotation)
    if kind is not None:
        return kind, False, False
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        optional = len(non_none) < len(args)
        inner = [_nested_kind(a) for a in non_none]
        found = [i for i in inner if i is not None]
        if found:
            kind, many, _ = found[0]
            return kind, many, optional
        return None
    if origin in (list, tuple, Sequence, typing.Sequence) or (
        isinstance(origin, type) and origin is not None and issubclass(origin, Sequence)
    ):
        elems = [a for a in args if a is not Ellipsis]
        if len(elems) == 1:
            kind = _kind_of_type(elems[0])
            if kind is not None:
                return kind, True, False
    return None


def _any_ref(kind: str, many: bool) -> Any:
    # pydantic would try to resolve a real "$ref" while generating the schema, so
    # mark the field and swap the marker for the ref in ComponentSchema.json_schema.
    return Annotated[Any, WithJsonSchema({"x-pretrain-kind": kind, "x-many": many})]


def _ref_for(kind: str, many: bool) -> dict[str, Any]:
    ref: dict[str, Any] = {"$ref": f"#/$defs/{kind}"}
    return {"type": "array", "items": ref} if many else ref


def _resolve_hints(func: Any, owner: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise SchemaDerivationError(
            f"cannot resolve the type annotations of {owner.__qualname__}.__init__: "
            f"{type(exc).__name__}: {exc} (annotations must be importable at run time, "
            "not only under TYPE_CHECKING)"
        ) from exc


def _signature_params(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[inspect.Parameter, Any, type]]:
    """Collect (parameter, annotation, defining class), following ``**kwargs`` up the MRO.

    ``skip`` names arguments the engine passes at run time (an optimizer's ``params``).
    """
    collected: dict[str, tuple[inspect.Parameter, Any, type]] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object or klass.__module__.startswith("torch."):
            break
        sig = inspect.signature(init)
        hints = _resolve_hints(init, klass)
        has_var_kw = False
        for pname, param in list(sig.parameters.items())[1:]:
            if param.kind is param.VAR_KEYWORD:
                has_var_kw = True
                continue
            if param.kind is param.VAR_POSITIONAL or pname in skip:
                continue
            if param.kind is param.POSITIONAL_ONLY:
                raise SchemaDerivationError(
                    f"{klass.__qualname__}.__init__ parameter {pname!r} is positional-only; "
                    "spec fields are passed by keyword"
                )
            if pname in collected:
                continue
            if pname not in hints:
                raise SchemaDerivationError(
                    f"{klass.__qualname__}.__init__ parameter {pname!r} has no type annotation; "
                    "annotate every parameter so the spec can be validated"
                )
            collected[pname] = (param, hints[pname], klass)
        if not has_var_kw:
            break
    return list(collected.values())


def _derive(cls: type, kind: str, name: str) -> ComponentSchema:
    summary, descriptions = parse_docstring(cls.__doc__)
    init_doc = cls.__dict__.get("__init__")
    if init_doc is not None and init_doc.__doc__:
        _, more = parse_docstring(init_doc.__doc__)
        descriptions = {**more, **descriptions}
    explicit = getattr(cls, "config_model", None)
    nested: dict[str, NestedField] = {}
    if isinstance(explicit, type) and issubclass(explicit, BaseModel):
        for fname, finfo in explicit.model_fields.items():
            found = _nested_kind(
                Annotated[(finfo.annotation, *finfo.metadata)] if finfo.metadata else finfo.annotation
            )
            if found is not None:
                kind_, many, _optional = found
                default = None if finfo.is_required() else finfo.get_default(call_default_factory=True)
                nested[fname] = NestedField(
                    fname, kind_, many, finfo.is_required(), default, finfo.description or ""
                )
        _check_reserved(cls, explicit.model_fields)
        return ComponentSchema(
            cls, kind, name, explicit, nested, summary, inspect.getdoc(cls) or "",
            {k: v.description or descriptions.get(k, "") for k, v in explicit.model_fields.items()},
            True,
        )

    fields: dict[str, Any] = {}
    for param, annotation, _owner in _signature_params(cls, KIND_INFO[kind].runtime_args):
        pname = param.name
        required = param.default is inspect.Parameter.empty
        desc = descriptions.get(pname, "")
        found = _nested_kind(annotation)
        if found is not None:
            kind_, many, _optional = found
            default = None if required else param.default
            if isinstance(default, Mapping):
                default = dict(default)
            nested[pname] = NestedField(pname, kind_, many, required, default, desc)
            fields[pname] = (
                _any_ref(kind_, many),
                Field(... if required else None, description=desc or None),
            )
            continue
        info = Field(... if required else param.default, description=desc or None)
        fields[pname] = (annotation, info)
    _check_reserved(cls, fields)
    try:
        model = create_model(
            f"{name}Config",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
            **fields,
        )
        model.model_json_schema()
    except Exception as exc:
        raise SchemaDerivationError(
            f"cannot derive a schema from {cls.__qualname__}.__init__: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0]} (use spec-friendly types: int, float, str, bool, "
            "Literal, tuples/lists of those, or declare `config_model`)"
        ) from exc
    return ComponentSchema(
        cls, kind, name, model, nested, summary, inspect.getdoc(cls) or "", descriptions, False
    )


def _check_reserved(cls: type, fields: Mapping[str, Any]) -> None:
    for reserved in RESERVED_FIELDS:
        if reserved in fields:
            raise SchemaDerivationError(
                f"{cls.__qualname__} declares a parameter named {reserved!r}, which every "
                "spec table reserves; rename it"
            )


@functools.cache
def _cached(cls: type, kind: str, name: str) -> ComponentSchema:
    return _derive(cls, kind, name)


def component_schema(cls: type, kind: str, name: str | None = None) -> ComponentSchema:
    """Return (and cache) the schema of ``cls`` registered as ``kind``/``name``.

    Raises:
        SchemaDerivationError: The signature cannot be turned into a schema.

    """
    return _cached(cls, kind, name or cls.__name__)


def check_component_contract(record: EntryRecord, obj: Any) -> None:
    """Registry validator: the object must be a class of the right kind with a schema.

    Raises:
        TypeError: Not a class, not an ``nn.Module`` for module kinds, or no schema.

    """
    if not isinstance(obj, type):
        raise TypeError(
            f"{record.value} is a {type(obj).__name__}, not a class; a {record.kind} entry "
            "point must name a class"
        )
    info = KIND_INFO[record.kind]
    if info.requires is not None and not _subclass_of(obj, info.requires):
        raise TypeError(f"{obj.__qualname__} is not a {info.requires} subclass; every {record.kind} must be")
    declared = getattr(obj, "component_kind", None)
    if isinstance(declared, str) and declared in KINDS and declared != record.kind:
        raise TypeError(
            f"{obj.__qualname__} is a {declared} (component_kind) but is registered in the "
            f"{KINDS[record.kind]} group"
        )
    if not info.spec:
        _check_converter(obj)
        return
    component_schema(obj, record.kind, record.name)


def _subclass_of(cls: type, dotted: str) -> bool:
    """``issubclass(cls, <dotted>)`` without importing it: a subclass means it is imported already."""
    module_name, _, attr = dotted.rpartition(".")
    module = sys.modules.get(module_name)
    base = getattr(module, attr, None) if module is not None else None
    return isinstance(base, type) and issubclass(cls, base)


def _check_converter(obj: type) -> None:
    """A weight converter: a class with ``convert`` and an ``architectures`` mapping."""
    if not callable(getattr(obj, "convert", None)):
        raise TypeError(f"{obj.__qualname__} has no convert(state_dict, *, source, arch) method")
    archs = getattr(obj, "architectures", None)
    if not isinstance(archs, Mapping) or not archs or not all(
        isinstance(src, str) and isinstance(pats, Sequence) and not isinstance(pats, str) and pats
        for src, pats in archs.items()
    ):
        raise TypeError(
            f"{obj.__qualname__}.architectures must map each source library to a non-empty list of "
            "architecture-name patterns, e.g. {'torchvision': ['resnet(18|34|50)']}"
        )
    for patterns in archs.values():
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise TypeError(f"{obj.__qualname__}.architectures: bad pattern {pattern!r}: {exc}") from None


def literal_values(annotation: Any) -> list[Any]:
    """Values of a ``Literal[...]`` (possibly inside Annotated/Optional), else []."""
    tp, _ = _strip_annotated(annotation)
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    return []


def describe_type(annotation: Any) -> str:
    """Short human-readable form of a type annotation for ``describe`` tables."""
    tp, _ = _strip_annotated(annotation)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(describe_type(a) for a in args)
    if tp is type(None):
        return "None"
    if origin is not None:
        name = getattr(origin, "__name__", repr(origin))
        inner = ", ".join("..." if a is Ellipsis else describe_type(a) for a in args)
        return f"{name}[{inner}]" if args else name
    if isinstance(tp, type):
        return tp.__name__
    return repr(tp).replace("typing.", "").replace("collections.abc.", "")


def field_info(schema: ComponentSchema, name: str) -> FieldInfo | None:
    """The pydantic FieldInfo of ``name`` (None for ``init``)."""
    return schema.model.model_fields.get(name)
