"""``pretrain describe NAME``: a component's documentation and fields."""

from __future__ import annotations

import argparse
from typing import Any

from pretrain.registry.kinds import KIND_INFO, KINDS

__all__ = ["add_parser", "constraints", "cross_field_checks", "run"]


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "describe",
        help="show a component's docs and fields",
        description="Show a component's summary, documentation and fields (JSON Schema with --json).",
    )
    p.add_argument("name", help="component type, e.g. ResNet or dist:ResNet")
    p.add_argument("--kind", choices=list(KINDS), help="disambiguate a name used by several kinds")
    p.add_argument("--json", action="store_true", help="print the component's JSON Schema")
    p.set_defaults(run=run)


def _find(name: str, kind: str | None) -> tuple[str, Any]:
    from pretrain.errors import ComponentLookupError, close_matches
    from pretrain.registry.registry import get_registry

    registry = get_registry()
    bare = name.rpartition(":")[2]
    kinds = [kind] if kind else sorted({r.kind for r in registry.entries() if r.name == bare})
    if not kinds:
        every = sorted({r.name for r in registry.entries()})
        close = close_matches(bare, every, n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else "run `pretrain list-components`"
        raise ComponentLookupError(f"no installed component is called {name!r}", hint=hint)
    if len(kinds) > 1:
        raise ComponentLookupError(
            f"{name!r} names components of several kinds: {', '.join(kinds)}",
            hint="Pass --kind to pick one.",
        )
    return kinds[0], registry.resolve(kinds[0], name)


def run(args: argparse.Namespace) -> int:
    """Describe one component."""
    from pretrain.registry.plugins import load_plugins
    from pretrain.registry.registry import get_registry
    from pretrain.registry.schema import component_schema
    from pretrain.spec.jsonschema import component_json_schema

    registry = get_registry()
    load_plugins(registry)
    kind, record = _find(args.name, args.kind)
    cls = registry.load(record)
    if not KIND_INFO[kind].spec:
        _print_converter(record, cls, as_json=args.json)
        return 0
    schema = component_schema(cls, kind, record.name)
    document = component_json_schema(record, schema, registry)
    if not KIND_INFO[kind].weights:  # datasets, transforms, batch augments: no weights to initialise
        document["properties"].pop("init", None)
        document["$defs"].pop("init_rules", None)
    checks = cross_field_checks(cls)
    if checks:
        document["x-cross-field-checks"] = [f"{name}: {text}" for name, text in checks]
    if args.json:
        from pretrain.cli._console import print_json

        print_json(document)
        return 0
    _print_human(record, schema, document, checks)
    return 0


#: Class methods whose docstrings document checks between fields (and against [data]).
_CHECK_METHODS = {
    "spec_issues": "checked when the spec is validated",
    "data_issues": "checked against [data] by `pretrain validate`",
}


def cross_field_checks(cls: type) -> list[tuple[str, str]]:
    """``(method, first docstring paragraph)`` of the checks a class documents beyond its field types."""
    import inspect

    found = []
    for name, when in _CHECK_METHODS.items():
        method = getattr(cls, name, None)
        doc = inspect.getdoc(method) if callable(method) else None
        if doc:
            found.append((f"{name} ({when})", " ".join(doc.split("\n\n")[0].split())))
    return found


def constraints(prop: dict[str, Any]) -> str:
    """A field's value constraints from its JSON Schema: ``> 0``, ``0 <= x <= 1``, ``each > 0``."""
    parts = []
    bounds = (("exclusiveMinimum", "> {}"), ("minimum", ">= {}"), ("exclusiveMaximum", "< {}"),
              ("maximum", "<= {}"), ("multipleOf", "multiple of {}"), ("minLength", "length >= {}"),
              ("maxLength", "length <= {}"), ("minItems", "at least {} items"), ("maxItems", "at most {} items"),
              ("pattern", "matches {}"))
    for key, template in bounds:
        if key in prop:
            parts.append(template.format(prop[key]))
    for key in ("items",):
        inner = constraints(prop[key]) if isinstance(prop.get(key), dict) else ""
        if inner:
            parts.append(f"each {inner}")
    for item in prop.get("prefixItems") or []:
        inner = constraints(item) if isinstance(item, dict) else ""
        if inner and f"each {inner}" not in parts:
            parts.append(f"each {inner}")
    for member in prop.get("anyOf") or []:
        inner = constraints(member) if isinstance(member, dict) else ""
        for part in inner.split(", ") if inner else []:
            if part not in parts:
                parts.append(part)
    return ", ".join(parts)


def _print_human(record: Any, schema: Any, document: dict[str, Any], checks: list[tuple[str, str]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from pretrain.cli._console import console
    from pretrain.registry.schema import describe_type

    console.print(f"[bold]{record.name}[/] ({record.kind}) from {record.distribution} {record.version}")
    console.print(f"[dim]{escape(record.value)}[/]\n")
    if schema.doc:
        console.print(escape(schema.doc.split("Args:")[0].strip()) + "\n")
    table = Table(title="Fields", title_justify="left")
    for col in ("field", "type", "default", "constraints", "description"):
        table.add_column(col, overflow="fold")
    properties = document.get("properties", {})
    for name, info in schema.model.model_fields.items():
        nested = schema.nested.get(name)
        if nested is not None:
            typ = f"{nested.kind} spec" + (" list" if nested.many else "")
            default = "required" if nested.required else repr(nested.default)
        else:
            typ = describe_type(info.annotation)
            default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        limits = constraints(properties.get(name, {}))
        table.add_row(name, escape(typ), escape(default), escape(limits), escape(schema.descriptions.get(name, "")))
    if "init" in properties:  # only components that own weights take init rules
        table.add_row("init", "list of init rules", "class default", "",
                      "weight initialisation rules (Kaiming, Normal, Pretrained, ...); see docs/writing-plugins.md")
    console.print(table)
    for name, text in checks:
        console.print(f"[bold]checks[/] {escape(name)}: {escape(text)}")


def _print_converter(record: Any, cls: Any, *, as_json: bool) -> None:
    """A weight converter has no spec fields: show what it converts."""
    import inspect

    from rich.markup import escape
    from rich.table import Table

    from pretrain.cli._console import console, print_json

    archs = {src: list(patterns) for src, patterns in cls.architectures.items()}
    if as_json:
        print_json({"name": record.name, "kind": record.kind, "distribution": record.distribution,
                    "version": record.version, "summary": inspect.getdoc(cls) or "",
                    "architectures": archs})
        return
    console.print(f"[bold]{escape(record.name)}[/] ({record.kind}) from {record.distribution} {record.version}")
    console.print(f"[dim]{escape(record.value)}[/]\n")
    console.print(escape(inspect.getdoc(cls) or "") + "\n")
    table = Table(title="Architectures (regular expressions over --arch, without a timm .tag)",
                  title_justify="left")
    table.add_column("--from")
    table.add_column("--arch patterns", overflow="fold")
    for src, patterns in archs.items():
        table.add_row(escape(src), escape(", ".join(patterns)))
    console.print(table)
