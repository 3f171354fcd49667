"""Reading specs: TOML/JSON files, ``extends`` and ``--set`` overrides.

Specs are data, never code. Merging rules (child wins):

- tables merge key by key, recursively;
- a table whose ``type`` changes is *replaced*, not merged (so switching a
  schedule from ``step`` to ``cosine`` cannot leak the old ``step`` fields);
- lists and scalars replace.
"""

from __future__ import annotations

import codecs
import copy
import errno
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import tomllib

from pretrain.errors import SpecError, SpecIssue
from pretrain.spec.limits import MAX_DEPTH, MAX_SPEC_BYTES, MAX_SPEC_FILES

__all__ = ["apply_override", "deepest_path", "load_spec", "merge_specs", "parse_override", "read_spec_file"]

SUFFIXES = (".toml", ".json")


def read_spec_file(path: Path) -> dict[str, Any]:
    """Parse one TOML or JSON file (no ``extends`` processing).

    The file must be a regular UTF-8 file (a leading byte-order mark is ignored) of at
    most :data:`~pretrain.spec.limits.MAX_SPEC_BYTES`, nested at most
    :data:`~pretrain.spec.limits.MAX_DEPTH` levels; a JSON object must not repeat a key.

    Raises:
        SpecError: Missing or unreadable file, a directory, unknown suffix, wrong
            encoding, too large or too deep, duplicate JSON keys, or a syntax error
            (with line/column).

    """
    source = str(path)

    def fail(msg: str) -> SpecError:
        return SpecError([SpecIssue("", msg)], source=source)

    suffix = path.suffix.lower()
    data = _read_bytes(path, fail)
    if suffix not in SUFFIXES:
        raise fail(f"{path.name}: a spec must be a .toml or .json file")
    text = _decode(path, data, fail)
    if suffix == ".toml":
        _check_dotted_keys(path, text, fail)
    duplicates: list[str] = []
    try:
        if suffix == ".toml":
            parsed: Any = tomllib.loads(text)
        else:
            parsed = json.loads(text, object_pairs_hook=_object_hook(duplicates))
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"TOML syntax error: {exc}") from None
    except json.JSONDecodeError as exc:
        raise fail(f"JSON syntax error at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise fail(_too_deep(path)) from None
    if duplicates:
        keys = ", ".join(duplicates[:5]) + (" ..." if len(duplicates) > 5 else "")
        raise fail(
            f"{path.name} repeats key(s) {keys} in one JSON object; JSON readers silently keep "
            "the last value, so remove the duplicates"
        )
    if not isinstance(parsed, dict):
        raise fail("the top level of a spec must be a table/object")
    deep = deepest_path(parsed)
    if deep is not None:
        raise fail(_too_deep(path, deep))
    return parsed


def _read_bytes(path: Path, fail: Callable[[str], SpecError]) -> bytes:
    """The file's bytes: a regular file of at most MAX_SPEC_BYTES, or a clear error."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise fail(f"spec file {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise fail(f"spec file {path} is a symbolic link that loops back on itself; "
                       "point it at a real file") from None
        raise fail(f"cannot read spec file {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise fail(f"{path} is a directory, not a spec file; pass the .toml or .json file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise fail(f"{path} is not a regular file (a device, pipe or socket); pass a .toml or .json file")
    if info.st_size > MAX_SPEC_BYTES:
        raise fail(_too_large(path, info.st_size))
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)  # the file may have grown since stat()
    except PermissionError:
        raise fail(f"cannot read spec file {path}: permission denied; check its permissions") from None
    except OSError as exc:
        raise fail(f"cannot read spec file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise fail(_too_large(path, len(data)))
    return data


def _too_large(path: Path, size: int) -> str:
    return (f"{path} is {size / 2**20:.1f} MiB; a spec file may be at most {MAX_SPEC_BYTES // 2**20} MiB "
            "(specs describe components, they do not hold data or weights)")


def _too_deep(path: Path, where: str | None = None) -> str:
    at = f" (at {where})" if where else ""
    return (f"{path.name} nests tables/lists more than {MAX_DEPTH} levels deep{at}; "
            "spec tables nest a few levels only")


def _decode(path: Path, data: bytes, fail: Callable[[str], SpecError]) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped, as editors on Windows write one)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise fail(f"{path.name} is UTF-16 encoded; spec files must be UTF-8: save it as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise fail(
            f"{path.name} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at line {line}, column "
            f"{column}); spec files must be UTF-8: save it as UTF-8"
        ) from None


# A bare, basic-quoted or literal-quoted TOML key, then MAX_DEPTH more ".part"s. tomllib
# builds every dotted key part by part (quadratic), so a 50,000-part key would take
# minutes and exhaust the stack; such keys are refused before parsing.
_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_LONG_DOTTED_KEY = re.compile(rf"{_KEY}(?:[ \t]*\.[ \t]*{_KEY}){{{MAX_DEPTH},}}")


def _check_dotted_keys(path: Path, text: str, fail: Callable[[str], SpecError]) -> None:
    match = _LONG_DOTTED_KEY.search(text)
    if match is not None:
        line = text.count("\n", 0, match.start()) + 1
        raise fail(
            f"{path.name} line {line}: a dotted key with more than {MAX_DEPTH} parts; spec tables "
            f"nest at most {MAX_DEPTH} levels"
        )


def _object_hook(duplicates: list[str]) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                duplicates.append(repr(key))
            out[key] = value
        return out

    return hook


def deepest_path(data: Any, limit: int = MAX_DEPTH) -> str | None:
    """The path of a value nested more than ``limit`` levels deep in ``data``, or None.

    Iterative, so any depth is checked without exhausting the stack.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, Mapping):
            children: Iterable[tuple[Any, Any]] = node.items()
        elif isinstance(node, list | tuple):
            children = enumerate(node)
        else:
            continue
        for key, value in children:
            if len(path) >= limit:
                return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[:6]).lstrip(".") + "..."
            stack.append((value, (*path, key)))
    return None


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


def _load_with_extends(path: Path, stack: list[Path], loaded: list[Path]) -> dict[str, Any]:
    data = read_spec_file(path)  # first: it reports a missing file or a symlink loop clearly
    resolved = path.resolve()
    if resolved in stack:
        cycle = " -> ".join(p.name for p in [*stack, resolved])
        raise SpecError([SpecIssue("extends", f"cycle in extends: {cycle}")], source=str(stack[0]))
    loaded.append(resolved)
    if len(loaded) > MAX_SPEC_FILES:
        raise SpecError(
            [SpecIssue("extends", f"loading this spec reads more than {MAX_SPEC_FILES} files through "
                       "extends (is a base listed many times?); flatten the chain")],
            source=str(stack[0] if stack else path),
        )
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
        if not os.path.lexists(base_path):
            raise SpecError(
                [SpecIssue(f"extends[{i}]", f"base spec {rel!r} not found (looked for {base_path})")],
                source=str(path),
            )
        merged = merge_specs(merged, _load_with_extends(base_path, [*stack, resolved], loaded))
    return merge_specs(merged, data)


def _set_error(text: str, msg: str) -> SpecError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return SpecError([SpecIssue(f"--set {shown}", msg)])


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=VALUE``; VALUE is a TOML literal, or a bare string when it is not one.

    Raises:
        SpecError: No ``=``, an empty key part, a key of more than ``MAX_DEPTH`` parts,
            or a value nested deeper than that.

    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not part.strip() for part in parts):
        raise _set_error(text, "expected KEY=VALUE with a dotted key, e.g. model.head.num_classes=100")
    if len(parts) > MAX_DEPTH:
        raise _set_error(text, f"the key has {len(parts)} parts; spec tables nest at most {MAX_DEPTH} levels")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        # Unquoted words (`--set model.backbone.type=ResNet`) are taken as strings,
        # like MMEngine's --cfg-options; anything TOML can parse keeps its type.
        value = raw
    except RecursionError:
        value = None
    if value is None or deepest_path(value, MAX_DEPTH - len(parts)) is not None:
        raise _set_error(text, f"the value nests too deeply; spec tables nest at most {MAX_DEPTH} levels")
    return [part.strip() for part in parts], value


def _list_index(part: str, size: int) -> int | None:
    """``part`` as an index into a list of ``size`` items (ASCII digits only), else None."""
    if not (part.isascii() and part.isdigit()) or len(part) > 9:
        return None
    index = int(part)
    return index if index < size else None


def apply_override(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    """Set ``data[path] = value``, creating tables; integer parts index lists.

    Raises:
        SpecError: The path runs through a scalar or an out-of-range list index.

    """
    node: Any = data
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            index = _list_index(part, len(node))
            if index is None:
                raise _set_error(text, f"{where}: no list item {part!r} (the list has {len(node)} "
                                       f"item(s), numbered 0 to {len(node) - 1})")
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise _set_error(text, f"{'.'.join(path[:i]) or where} is not a table")
        if part not in node:
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        index = _list_index(last, len(node))
        if index is None:
            raise _set_error(text, f"no list item {last!r} in {'.'.join(path[:-1])} (it has {len(node)} "
                                   f"item(s), numbered 0 to {len(node) - 1})")
        node[index] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise _set_error(text, f"{'.'.join(path[:-1])} is not a table")


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
        deep = deepest_path(spec)
        if deep is not None:  # before deepcopy, which would exhaust the stack
            raise SpecError([SpecIssue(deep, f"nested more than {MAX_DEPTH} levels deep")])
        data = copy.deepcopy(dict(spec))
        if "extends" in data:
            raise SpecError([SpecIssue("extends", "extends is only supported in spec files")])
    else:
        data = _load_with_extends(Path(spec), [], [])
    for text in overrides:
        path, value = parse_override(text)
        apply_override(data, path, value, text)
    return data
