"""The validation context: collects path-tagged issues while a spec is validated (torch-free).

:class:`ValidationContext` is shared by the component validator and every section
validator (``[data]``, ``[train]``, ``[eval]``), so pydantic errors become
:class:`~pretrain.errors.SpecIssue` s in exactly one place
(:meth:`ValidationContext.add_pydantic`) and every message reads the same.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from pretrain.errors import ComponentLookupError, PluginLoadError, SpecIssue, did_you_mean
from pretrain.registry.records import EntryRecord
from pretrain.registry.registry import Registry, get_registry
from pretrain.registry.schema import RESERVED_FIELDS, ComponentSchema, SchemaDerivationError, component_schema
from pretrain.spec.init_rules import Rule, checkpoint_problem, validate_init
from pretrain.spec.paths import clean_loc, join_loc
from pretrain.spec.paths import known_fields as known_fields_of
from pretrain.spec.values import MISSING, value_issues

__all__ = ["ComponentNode", "ValidationContext"]

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



class ValidationContext:
    """Collects issues while validating; used by the core and by engine sections.

    Args:
        registry: Registry to resolve ``type`` values (the process-wide one by default).
        check_files: Check that files the spec names exist (off to validate a spec
            whose checkpoint another run has yet to write).

    """

    def __init__(self, registry: Registry | None = None, *, check_files: bool = True) -> None:
        self.registry = registry or get_registry()
        self.issues: list[SpecIssue] = []
        #: Whether files the spec names (``Pretrained`` checkpoints) must exist now.
        self.check_files = check_files

    def add(self, loc: str, msg: str) -> None:
        """Record one issue at ``loc``."""
        self.issues.append(SpecIssue(loc, msg))

    def add_pydantic(
        self, exc: ValidationError, prefix: str, root: Any = None, known_fields: Sequence[str] = ()
    ) -> None:
        """Record a pydantic error's entries under ``prefix``: the one place this happens.

        Union members are dropped from paths (``train.optimizer.momentum``, not
        ``train.optimizer.SGD.momentum``), the errors of a union's branches for one
        field are folded into one issue, unknown keys get a did-you-mean over the
        fields of the table they were given to, and an unknown discriminator value
        (``type = "Lion"``) lists the choices.

        Args:
            exc: The pydantic error.
            prefix: Spec path of the validated value (``model.head``, ``train``).
            root: The annotation the value was validated against (model class,
                ``list[Rule]``...), which lets paths and field lists be exact.
            known_fields: Accepted keys at the top level, when they differ from the
                model's fields (a component table also takes ``type`` and ``init``).

        """
        by_field: dict[tuple[Any, ...], list[tuple[dict[str, Any], Any]]] = {}
        for err in exc.errors(include_url=False):
            cleaned, _ = clean_loc(root, err["loc"])
            by_field.setdefault(tuple(cleaned), []).append((dict(err), err["loc"]))
        for parts, errs in by_field.items():
            loc = join_loc(prefix, *parts)
            first, raw_loc = errs[0][0], list(errs[0][1])
            if first["type"] == "extra_forbidden":
                key = str(parts[-1]) if parts else "?"
                _, parent = clean_loc(root, raw_loc[:-1])
                fields = known_fields if len(parts) == 1 and known_fields else known_fields_of(parent)
                accepted = ", ".join(fields) or "none"
                self.add(loc, f"unknown field{did_you_mean(key, fields)} (accepted fields: {accepted})")
            elif first["type"] == "missing":
                self.add(loc, "required field is missing")
            elif first["type"] == "int_parsing_size":
                self.add(loc, f"is far too large (got {_short.repr(first.get('input'))})")
            elif first["type"] == "union_tag_invalid":
                tag = str(first["ctx"]["tag"])
                names = [t.strip(" '") for t in str(first["ctx"]["expected_tags"]).split(",")]
                choices = ", ".join(names)
                self.add(loc, f"unknown type {tag!r}{did_you_mean(tag, names, n=1)} (choose one of: {choices})")
            else:
                msgs = list(dict.fromkeys(e["msg"] for e, _ in errs))
                got = first.get("input")
                self.add(loc, " / ".join(msgs) + f" (got {_short.repr(got)})")

    def check_values(self, raw: Any, validated: Any, loc: str) -> None:
        """Record booleans read as numbers and non-finite numbers in ``raw`` (see :mod:`.values`).

        ``validated`` is what pydantic made of ``raw`` (``MISSING`` when validation
        failed). Paths pydantic already reported are not reported twice.
        """
        seen = {issue.loc for issue in self.issues}
        for where, msg in value_issues(raw, validated, loc):
            if where not in seen:
                self.add(where, msg)

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
            self.add(join_loc(loc, "type"), f"missing; choose a {kind} type, e.g. one of: {names}")
            return None
        if not isinstance(type_name, str):
            self.add(join_loc(loc, "type"), f"must be a string, got {_short.repr(type_name)}")
            return None
        try:
            record = self.registry.resolve(kind, type_name)
            cls = self.registry.load(record)
            schema = component_schema(cls, kind, record.name)
        except (ComponentLookupError, PluginLoadError) as exc:
            self.add(join_loc(loc, "type"), f"{exc.message}. {exc.hint}" if exc.hint else exc.message)
            return None
        except SchemaDerivationError as exc:  # pragma: no cover - the registry validator catches it
            self.add(join_loc(loc, "type"), f"{kind} {type_name!r} is not a valid component: {exc}")
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
        nodes = [self.component(kind, v, join_loc(loc, i)) for i, v in enumerate(values)]
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
            self.add_pydantic(exc, loc, schema.model, known)
            instance = None
        plain = {k: v for k, v in fields.items() if k not in schema.nested}
        values_before = len(self.issues)
        self.check_values(plain, MISSING if instance is None else instance, loc)
        if len(self.issues) > values_before:
            instance = None  # its numbers are not what the user meant: no cross-field checks on them
        if instance is not None:
            params = {
                name: getattr(instance, name)
                for name in schema.model.model_fields
                if name not in schema.nested
            }
        children: dict[str, ComponentNode | list[ComponentNode] | None] = {}
        for name, nested in schema.nested.items():
            sub = value.get(name, nested.default)
            sub_loc = join_loc(loc, name)
            if sub is None:
                if nested.required and name in value:
                    self.add(sub_loc, f"a {nested.kind} is required here")
                children[name] = None
            elif nested.many:
                children[name] = self.components(nested.kind, list(sub) if isinstance(sub, tuple) else sub, sub_loc)
            else:
                children[name] = self.component(nested.kind, sub, sub_loc)
        init_rules = None
        if "init" in value and not schema.takes_init:
            self.add(join_loc(loc, "init"), f"a {kind} has no weights, so it takes no init rules; remove `init`")
        elif "init" in value:
            init_rules = self._init_rules(value["init"], join_loc(loc, "init"))
        if instance is not None and hasattr(cls, "spec_issues"):
            try:
                for field_name, msg in cls.spec_issues(params):
                    self.add(join_loc(loc, field_name), msg)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # plugin code: even sys.exit() must not end validation
                self.add(loc, f"{type_name}.spec_issues (from {record.distribution} {record.version}) failed: "
                              f"{type(exc).__name__}: {exc}")
        if len(self.issues) > before:
            return None
        return ComponentNode(kind, type_name, record, cls, schema, params, children, init_rules, loc)

    def _init_rules(self, value: Any, loc: str) -> list[Any] | None:
        if isinstance(value, Mapping):
            value = [value]
        try:
            rules = list(validate_init(value))
        except ValidationError as exc:  # locations already relative to the `init` list
            self.add_pydantic(exc, loc, list[Rule])
            self.check_values(value, MISSING, loc)
            return None
        before = len(self.issues)
        self.check_values(value, rules, loc)
        if self.check_files:
            for i, rule in enumerate(rules):
                problem = checkpoint_problem(getattr(rule, "checkpoint", None))
                if problem:
                    key = ".".join([*loc.replace("[", ".").replace("]", "").split("."), str(i), "checkpoint"])
                    self.add(join_loc(loc, i, "checkpoint"),
                             f"{problem}; e.g. --set {key}=PATH.safetensors (`pretrain validate --no-file-checks` "
                             "checks the rest of the spec before the file exists)")
        return rules if len(self.issues) == before else None
