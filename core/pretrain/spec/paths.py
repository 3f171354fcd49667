"""Spec paths: turn a pydantic error location into the path a user wrote (torch-free).

pydantic puts the *member* of a union into an error's ``loc``: the discriminator
value (``"SGD"``), a model's class name, or a type tag (``int``,
``tuple[int, ...]``, ``function-after[...]``). Users think in spec keys only, so
``("optimizer", "SGD", "momentum")`` must read ``train.optimizer.momentum``.
:func:`clean_loc` walks the annotation the data was validated against and drops
exactly the parts that name a union member; where the structure is unknown it
falls back to recognising pydantic's type tags.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel

__all__ = ["clean_loc", "is_union_tag", "join_loc", "known_fields"]

_TYPE_TAGS = frozenset(
    {"int", "float", "str", "bool", "list", "tuple", "dict", "none", "json-or-python", "lax-or-strict"}
)


def join_loc(*parts: object) -> str:
    """``join_loc("model", "head", "loss")`` -> ``model.head.loss``; ints become ``[i]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "":
            out += f".{part}" if out else str(part)
    return out


def is_union_tag(part: Any) -> bool:
    """Whether ``part`` looks like a pydantic type tag rather than a spec key."""
    return isinstance(part, str) and (any(c in part for c in "[]() ,'") or part in _TYPE_TAGS)


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp, metadata = args[0], [*metadata, *args[1:]]
    return tp, metadata


def _alternatives(tp: Any) -> list[tuple[Any, set[str]]]:
    """The members of a union (flattened), each with the tags pydantic may use for it."""
    tp, metadata = _unwrap(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        out: list[tuple[Any, set[str]]] = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            out += _alternatives(arg)
        return out
    tags: set[str] = set()
    for meta in metadata:
        tag = getattr(meta, "tag", None)  # pydantic.Tag
        if isinstance(tag, str):
            tags.add(tag)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        tags.add(tp.__name__)
        field = tp.model_fields.get("type")
        if field is not None and typing.get_origin(field.annotation) is Literal:
            tags.update(str(a) for a in typing.get_args(field.annotation))
    return [(tp, tags)]


def _element(tp: Any, part: Any) -> tuple[bool, Any]:
    """Step from container/model ``tp`` into ``part``: ``(known, annotation)``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(part, int) and origin is not None:
        if origin in (list, set, frozenset) or (
            isinstance(origin, type) and issubclass(origin, Sequence) and origin is not tuple
        ):
            return True, args[0] if args else Any
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return True, args[0]
            return True, args[part] if part < len(args) else Any
    if isinstance(part, str):
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            field = tp.model_fields[part]
            annotation: Any = field.annotation
            if field.metadata:
                annotation = Annotated[(annotation, *field.metadata)]
            return True, annotation
        if origin is dict or (isinstance(origin, type) and issubclass(origin, Mapping)):
            return True, args[1] if len(args) == 2 else Any
    return False, None


def clean_loc(root: Any, loc: Sequence[Any]) -> tuple[list[Any], Any]:
    """Drop union-member tags from a pydantic ``loc``.

    Args:
        root: The annotation the data was validated against (a model class,
            ``list[Rule]``, ...), or None when unknown (tags are then guessed).
        loc: The error's location tuple.

    Returns:
        ``(parts, annotation)``: the spec path parts and the annotation found at the
        end of the path (None when the walk lost track), e.g. the model an unknown
        key was given to.

    """
    parts: list[Any] = []
    current: Any = root
    for part in loc:
        if current is None:
            if not is_union_tag(part):
                parts.append(part)
            continue
        alternatives = _alternatives(current)
        if len(alternatives) > 1:
            chosen = [tp for tp, tags in alternatives if part in tags]
            if chosen or is_union_tag(part):
                current = chosen[0] if chosen else None
                continue
        parts.append(part)
        for tp, _ in alternatives:
            known, nxt = _element(tp, part)
            if known:
                current = nxt
                break
        else:
            current = None
    return parts, current


def known_fields(annotation: Any) -> list[str]:
    """Field names of the model(s) at ``annotation`` (for did-you-mean on unknown keys)."""
    names: list[str] = []
    for tp, _ in _alternatives(annotation) if annotation is not None else []:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            names += [n for n in tp.model_fields if n not in names]
    return names
