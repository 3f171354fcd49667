"""Reading specs: TOML/JSON files, ``extends`` and ``--set`` overrides.

Specs are data, never code. Merging rules (child wins):

- tables merge key by key, recursively;
- a table whose ``type`` changes is *replaced*, not merged (so switching a
  schedule from ``step`` to ``cosine`` cannot leak the old ``step`` fields);
- lists and scalars replace.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomllib

from pretrain.errors import SpecError, SpecIssue

__all__ = ["apply_override", "load_spec", "merge_specs", "parse_override", "read_spec_file"]

SUFFIXES = (".toml", ".json")


def read_spec_file(path: Path) -> dict[str, Any]:
    """Parse one TOML or JSON file (no ``extends`` processing).

    Raises:
        SpecError: Missing file, unknown suffix, or a syntax error (with line/column).

    """
    if not path.is_file():
        raise SpecError(
            [SpecIssue("", f"spec file {path} does not exist")], source=str(path)
        )
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SpecError(
            [SpecIssue("", f"{path.name}: a spec must be a .toml or .json file")], source=str(path)
        )
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([SpecIssue("", f"TOML syntax error: {exc}")], source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise SpecError(
            [SpecIssue("", f"JSON syntax error at line {exc.lineno} column {exc.colno}: {exc.msg}")],
            source=str(path),
        ) from None
    if not isinstance(data, dict):
        raise SpecError([SpecIssue("", "the top level of a spec must be a table/object")], source=str(path))
    return data


def merge_specs(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``child`` over ``base`` (child wins; a table whose ``type`` changes is replaced)."""
    out: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in child.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            if "type" in value and "type" in old and value["type"] != old["type"]:
                out[key] = copy.deepcopy(dict(value))
            else:
                out[key] = merge_specs(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_with_extends(path: Path, stack: list[Path]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in stack:
        cycle = " -> ".join(p.name for p in [*stack, resolved])
        raise SpecError([SpecIssue("extends", f"cycle in extends: {cycle}")], source=str(stack[0]))
    data = read_spec_file(path)
    extends = data.pop("extends", [])
    if isinstance(extends, str):
        extends = [extends]
    if not isinstance(extends, list) or not all(isinstance(e, str) for e in extends):
        raise SpecError(
            [SpecIssue("extends", "must be a path or a list of paths (relative to this file)")],
            source=str(path),
        )
    merged: dict[str, Any] = {}
    for i, rel in enumerate(extends):
        base_path = (path.parent / rel) if not Path(rel).is_absolute() else Path(rel)
        if not base_path.is_file():
            raise SpecError(
                [SpecIssue(f"extends[{i}]", f"base spec {rel!r} not found (looked for {base_path})")],
                source=str(path),
            )
        merged = merge_specs(merged, _load_with_extends(base_path, [*stack, resolved]))
    return merge_specs(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=VALUE``; VALUE is a TOML literal, or a bare string when it is not one.

    Raises:
        SpecError: No ``=`` or an empty key.

    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(
            [SpecIssue(f"--set {text}", "expected KEY=VALUE with a dotted key, e.g. model.head.num_classes=100")]
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        # Unquoted words (`--set model.backbone.type=ResNet`) are taken as strings,
        # like MMEngine's --cfg-options; anything TOML can parse keeps its type.
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    """Set ``data[path] = value``, creating tables; integer parts index lists.

    Raises:
        SpecError: The path runs through a scalar or an out-of-range list index.

    """
    node: Any = data
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError([SpecIssue(f"--set {text}", f"{where}: no list item {part}")])
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise SpecError([SpecIssue(f"--set {text}", f"{where}: is not a table")])
        if part not in node:
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise SpecError([SpecIssue(f"--set {text}", f"no list item {last} in {'.'.join(path[:-1])}")])
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SpecError([SpecIssue(f"--set {text}", f"{'.'.join(path[:-1])} is not a table")])


def load_spec(
    spec: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Load a spec file (or copy a mapping), resolve ``extends`` and apply ``--set`` overrides.

    Args:
        spec: Path to a ``.toml``/``.json`` file, or an already-parsed mapping.
        overrides: ``a.b.c=VALUE`` strings, applied in order after merging.

    Returns:
        The merged raw spec (not yet validated).

    Raises:
        SpecError: Unreadable file, syntax error, bad ``extends``, bad override.

    """
    if isinstance(spec, Mapping):
        data = copy.deepcopy(dict(spec))
        if "extends" in data:
            raise SpecError([SpecIssue("extends", "extends is only supported in spec files")])
    else:
        data = _load_with_extends(Path(spec), [])
    for text in overrides:
        path, value = parse_override(text)
        apply_override(data, path, value, text)
    return data
