"""Checks pydantic's lax mode lets through: booleans read as numbers, and non-finite numbers.

pydantic turns ``true`` into ``1`` for an ``int`` field and ``1.0`` for a ``float``
one (so ``num_classes = true`` silently became one class), and accepts ``inf`` and
``nan`` for any float. Neither is ever meant in a spec. Strict mode is no answer: it
would also refuse a TOML list for a tuple field and an integer for a float field.
So the validated value is compared with the value as written (torch-free).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from pretrain.spec.paths import join_loc

__all__ = ["MISSING", "value_issues"]

#: Stands for "no validated value" (validation failed, or the key is not a field).
MISSING: Any = object()


def _child(validated: Any, key: Any) -> Any:
    """The validated counterpart of ``raw[key]`` (a dict entry, a model field, a list item)."""
    if isinstance(validated, BaseModel):
        return getattr(validated, key, MISSING) if isinstance(key, str) else MISSING
    if isinstance(validated, Mapping):
        return validated.get(key, MISSING)
    if isinstance(validated, list | tuple) and isinstance(key, int) and key < len(validated):
        return validated[key]
    return MISSING


def value_issues(raw: Any, validated: Any, loc: str) -> list[tuple[str, str]]:
    """``(spec path, message)`` for every boolean read as a number and every non-finite number.

    Args:
        raw: A value as written in the spec (already accepted by pydantic).
        validated: What pydantic made of it (a model, dict, list or scalar), or
            ``MISSING`` when unknown (then only non-finite numbers are found).
        loc: Spec path of ``raw``.

    """
    issues: list[tuple[str, str]] = []
    stack: list[tuple[Any, Any, str]] = [(raw, validated, loc)]
    while stack:
        value, out, where = stack.pop()
        if isinstance(value, bool):
            if out is not MISSING and not isinstance(out, bool) and isinstance(out, int | float):
                word = "true" if value else "false"
                issues.append((where, f"expected a number, got the boolean {word} (write a number, "
                                      f"e.g. {int(value)})"))
        elif isinstance(value, float):
            if not math.isfinite(value):
                issues.append((where, f"must be a finite number, got {value}"))
        elif isinstance(value, Mapping):
            stack += [(v, _child(out, k), join_loc(where, str(k))) for k, v in value.items()]
        elif isinstance(value, list | tuple):
            stack += [(v, _child(out, i), join_loc(where, i)) for i, v in enumerate(value)]
    return sorted(issues)
