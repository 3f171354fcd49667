"""JSON Schema export: per component (``describe --json``) and for the whole spec format."""

from __future__ import annotations

from typing import Any

from pretrain.errors import PluginLoadError
from pretrain.registry.kinds import KIND_INFO
from pretrain.registry.registry import EntryRecord, Registry, get_registry
from pretrain.registry.schema import ComponentSchema, component_schema

__all__ = ["component_json_schema", "spec_json_schema"]

_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _def_name(record: EntryRecord) -> str:
    return f"{record.kind}.{record.distribution}.{record.name}"


def _hoist(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    # pydantic puts helper models under a local "$defs"; move them to the document root.
    local = schema.pop("$defs", {})
    defs.update(local)
    return schema


def _init_rules_schema() -> dict[str, Any]:
    from pretrain.spec.init_rules import init_rules_json_schema

    return init_rules_json_schema()


def _kind_stub(registry: Registry, kind: str) -> dict[str, Any]:
    names = sorted({r.name for r in registry.entries(kind)} | {r.qualified_name for r in registry.entries(kind)})
    return {
        "type": "object",
        "description": f"a {kind} spec: a table with a `type` and that component's fields",
        "required": ["type"],
        "properties": {"type": {"enum": names}},
    }


def component_json_schema(
    record: EntryRecord, schema: ComponentSchema, registry: Registry | None = None
) -> dict[str, Any]:
    """A standalone JSON Schema for one component's table (nested kinds as loose stubs)."""
    registry = registry or get_registry()
    defs: dict[str, Any] = {}
    body = _hoist(schema.json_schema(record.qualified_name), defs)
    for nested in schema.nested.values():
        defs.setdefault(nested.kind, _kind_stub(registry, nested.kind))
    defs["init_rules"] = _hoist(_init_rules_schema(), defs)
    return {"$schema": _DRAFT, **body, "$defs": defs}


def spec_json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON Schema of the whole spec format with every loadable installed component.

    Each kind is a ``oneOf`` over its components plus an OpenAPI-style
    ``discriminator`` mapping on ``type`` (editors use it for completion). Broken
    components are left out and listed under ``x-broken-components``.
    """
    registry = registry or get_registry()
    defs: dict[str, Any] = {}
    broken: list[str] = []
    for kind in (k for k, info in KIND_INFO.items() if info.spec):
        refs: list[dict[str, str]] = []
        mapping: dict[str, str] = {}
        records = registry.entries(kind)
        bare_count: dict[str, int] = {}
        for record in records:
            bare_count[record.name] = bare_count.get(record.name, 0) + 1
        for record in records:
            try:
                cls = registry.load(record)
            except PluginLoadError as exc:
                broken.append(exc.message)
                continue
            name = _def_name(record)
            defs[name] = _hoist(
                component_schema(cls, kind, record.name).json_schema(record.qualified_name), defs
            )
            refs.append({"$ref": f"#/$defs/{name}"})
            mapping[record.qualified_name] = f"#/$defs/{name}"
            if bare_count[record.name] == 1:
                mapping[record.name] = f"#/$defs/{name}"
        defs[kind] = {
            "oneOf": refs or [{"not": {}}],
            "discriminator": {"propertyName": "type", "mapping": mapping},
        }
    defs["init_rules"] = _hoist(_init_rules_schema(), defs)
    properties: dict[str, Any] = {
        "extends": {
            "description": "base spec file(s), relative to this file; this file wins",
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
        "name": {"type": "string"},
        "description": {"type": "string"},
        "model": {"$ref": "#/$defs/model"},
    }
    from pretrain.spec.sections import section_json_schemas

    for name, section in section_json_schemas().items():
        properties[name] = _hoist(section, defs)
    out: dict[str, Any] = {
        "$schema": _DRAFT,
        "title": "pretrain spec",
        "type": "object",
        "required": ["model"],
        "additionalProperties": False,
        "properties": properties,
        "$defs": defs,
    }
    if broken:
        out["x-broken-components"] = broken
    return out
