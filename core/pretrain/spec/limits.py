"""Every size cap a spec is held to, in one place (torch-free).

Specs are untrusted data: a file may be huge, nested thousands of levels deep, or
describe a model no machine can hold. These caps make such input fail fast, with a
clear message, instead of exhausting memory or hanging ``pretrain validate``:

- a spec file (and each file it ``extends``) is at most :data:`MAX_SPEC_BYTES`;
- one spec loads at most :data:`MAX_SPEC_FILES` files through ``extends``;
- tables and lists nest at most :data:`MAX_DEPTH` levels (a dotted key or a
  ``--set`` key has at most that many parts);
- a model has at most :func:`max_params` parameters (20 billion by default;
  ``PRETRAIN_MAX_PARAMS`` or ``pretrain --max-params N`` changes it), counted on the
  ``meta`` device before any weight is allocated.
"""

from __future__ import annotations

import math
import os
import re
from typing import Final

from pretrain.errors import PretrainError

__all__ = [
    "DEFAULT_MAX_PARAMS",
    "MAX_DEPTH",
    "MAX_PARAMS_ENV",
    "MAX_SPEC_BYTES",
    "MAX_SPEC_FILES",
    "format_count",
    "max_params",
    "params_over_ceiling",
    "parse_count",
]

#: Largest spec file, ``extends`` bases included (bytes). Real specs are a few kB.
MAX_SPEC_BYTES: Final = 10 * 1024 * 1024
#: Most files one spec may load through ``extends`` (diamonds counted once per path).
MAX_SPEC_FILES: Final = 64
#: Deepest nesting of tables/lists; real specs use fewer than 10 levels.
MAX_DEPTH: Final = 32
#: Default ceiling on a model's parameter count (the largest published vision models
#: have a few billion; 20 B in fp32 is 80 GB of weights alone).
DEFAULT_MAX_PARAMS: Final = 20_000_000_000
#: Environment variable that overrides the parameter ceiling.
MAX_PARAMS_ENV: Final = "PRETRAIN_MAX_PARAMS"

_SUFFIXES: Final = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(text: str, *, what: str) -> int:
    """Parse a positive count such as ``20000000000``, ``20e9``, ``20B`` or ``1.5T``.

    Args:
        text: The value as written.
        what: Where it came from, for the error (``PRETRAIN_MAX_PARAMS``).

    Raises:
        PretrainError: Not a positive finite number.

    """
    match = re.fullmatch(r"\s*([0-9][0-9_.eE+-]*)\s*([kKmMbBgGtT]?)\s*", text)
    value = math.nan
    if match:
        try:
            value = float(match.group(1).replace("_", "")) * _SUFFIXES[match.group(2).lower()]
        except ValueError:
            value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise PretrainError(
            f"{what} = {text!r} is not a parameter count",
            hint="Give a positive number such as 20000000000, 20e9 or 20B (k, M, B/G, T suffixes).",
        )
    return int(value)


def max_params() -> int:
    """The parameter ceiling: ``PRETRAIN_MAX_PARAMS`` when set, else :data:`DEFAULT_MAX_PARAMS`.

    Raises:
        PretrainError: The variable is set to something that is not a count.

    """
    raw = os.environ.get(MAX_PARAMS_ENV, "").strip()
    return parse_count(raw, what=MAX_PARAMS_ENV) if raw else DEFAULT_MAX_PARAMS


def format_count(n: int) -> str:
    """``20000000000`` -> ``20 B``; ``1234567`` -> ``1.23 M`` (for messages)."""
    for size, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if n >= size:
            value = n / size
            return f"{value:,.0f} {unit}" if value >= 1000 else f"{value:.3g} {unit}"
    return str(n)


def params_over_ceiling(params: int, ceiling: int) -> str:
    """The message for a model above the parameter ceiling (what, how big, how to change it)."""
    return (
        f"the model would have {params:,} parameters ({format_count(params)}), above the ceiling of "
        f"{format_count(ceiling)}; a field is probably far too large (channels, widths, layers, "
        f"classes). To build models this large on purpose, raise the ceiling with "
        f"{MAX_PARAMS_ENV}=N or `pretrain --max-params N ...`"
    )
