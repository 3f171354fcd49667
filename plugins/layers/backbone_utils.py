"""Helpers for backbone authors.

``index_issues`` (the shared ``out_indices`` check for ``spec_issues``),
``first_issue_error`` (the same checks as a ``ValueError`` for direct construction),
``freeze``/``set_norm_eval`` (``frozen_stages``/``norm_eval``), ``maybe_checkpoint``
(``with_cp``), ``FrozenStagesMixin`` (the matching ``train`` and the staged forward
loop) and ``inherit_args_doc`` (a variant class reusing its base's documented fields,
which the spec schema reads).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import torch.utils.checkpoint as cp
from torch import Tensor, nn

__all__ = [
    "FrozenStagesMixin",
    "first_issue_error",
    "freeze",
    "index_issues",
    "inherit_args_doc",
    "maybe_checkpoint",
    "normalise_indices",
    "set_norm_eval",
    "signed_index_issues",
]


def index_issues(
    field: str, indices: Sequence[int], count: int, what: str = "stage"
) -> Iterator[tuple[str, str]]:
    """Validate ``out_indices``-like values against ``count`` outputs.

    Each index must be in ``0..count-1``; the sequence must be non-empty and
    strictly increasing, because the backbone returns one tensor per entry in
    network order (so an unsorted or repeated index could not be honoured).

    Args:
        field: Field name to report the issue under.
        indices: The requested indices.
        count: Number of available outputs.
        what: What an index selects, for the message (``stage``, ``layer``).

    Yields:
        ``(field, message)`` pairs, as ``spec_issues`` expects.

    """
    values = list(indices)
    if not values:
        yield field, f"must name at least one {what} (0..{count - 1})"
        return
    bad = [i for i in values if not 0 <= i < count]
    if bad:
        yield field, (
            f"{bad} out of range: this network has {count} {what}s, so each index must be "
            f"in 0..{count - 1} (negative indices are not accepted)"
        )
    elif any(b <= a for a, b in itertools.pairwise(values)):
        yield field, (
            f"{values} must be strictly increasing (outputs come back in network order, "
            "one per index)"
        )


def normalise_indices(indices: int | Sequence[int], count: int) -> tuple[int, ...]:
    """``out_indices`` as a fresh tuple with negative values counted from the end (-1 = last).

    The caller's value is never modified (MMPretrain rewrites the caller's list in place).
    """
    values = [indices] if isinstance(indices, int) else list(indices)
    return tuple(i + count if i < 0 else i for i in values)


def signed_index_issues(
    field: str, indices: int | Sequence[int], count: int, what: str = "stage"
) -> Iterator[tuple[str, str]]:
    """Like :func:`index_issues`, but negative indices count from the end (MMPretrain's -1 = last).

    Each index must be in ``-count..count-1``; once made non-negative the indices
    must be strictly increasing (outputs come back in network order).

    Args:
        field: Field name to report the issue under.
        indices: One index or a sequence of them.
        count: Number of available outputs.
        what: What an index selects, for the message (``stage``, ``layer``).

    Yields:
        ``(field, message)`` pairs, as ``spec_issues`` expects.

    """
    values = [indices] if isinstance(indices, int) else list(indices)
    if not values:
        yield field, f"must name at least one {what} (0..{count - 1}, or -{count}..-1 from the end)"
        return
    bad = [i for i in values if not -count <= i < count]
    if bad:
        yield field, (
            f"{bad} out of range: this network has {count} {what}s, so each index must be "
            f"in 0..{count - 1} (or -{count}..-1, counted from the end)"
        )
        return
    normal = normalise_indices(values, count)
    if any(b <= a for a, b in itertools.pairwise(normal)):
        yield field, (
            f"{values} must name {what}s in increasing network order, each once "
            f"(as non-negative indices: {list(normal)})"
        )


def maybe_checkpoint(fn: Callable[[Tensor], Tensor], x: Tensor, enabled: bool) -> Tensor:
    """``fn(x)``, with activation checkpointing (recomputed in backward) if ``enabled``.

    Checkpointing is skipped when ``x`` needs no gradient (nothing to save memory for).
    """
    if enabled and x.requires_grad:
        out: Tensor = cp.checkpoint(fn, x, use_reentrant=False)
        return out
    return fn(x)


def first_issue_error(cls: type, issues: Iterable[tuple[str, str]]) -> None:
    """Raise ``ValueError`` for the first issue, for direct (non-spec) construction."""
    for field, msg in issues:
        raise ValueError(f"{cls.__name__}: {field}: {msg}")


def set_norm_eval(module: nn.Module) -> None:
    """Put every BatchNorm of ``module`` in eval mode (freeze its running statistics)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def freeze(module: nn.Module) -> None:
    """Stop gradients for ``module``'s parameters and put it in eval mode."""
    module.eval()
    for param in module.parameters():
        param.requires_grad = False


_M = TypeVar("_M", bound="FrozenStagesMixin")


class FrozenStagesMixin(nn.Module):
    """``train``/forward plumbing of a CNN backbone built as named stages.

    Put it before the base class (``class X(FrozenStagesMixin, BaseBackbone)``); the
    backbone sets ``norm_eval`` and ``out_indices`` and defines ``_freeze_stages``.
    """

    norm_eval: bool
    out_indices: tuple[int, ...]

    def _freeze_stages(self) -> None:
        raise NotImplementedError

    def train(self: _M, mode: bool = True) -> _M:
        """Set train/eval mode, keeping frozen stages (and BN with ``norm_eval``) in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            set_norm_eval(self)
        return self

    def _forward_stages(self, x: Tensor, names: Sequence[str]) -> tuple[Tensor, ...]:
        """Run the child modules ``names`` in order; keep the outputs at ``out_indices``."""
        outs = []
        for i, name in enumerate(names):
            x = getattr(self, name)(x)  # (B, C_i, H_i, W_i)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


def inherit_args_doc(
    cls: type, base: type, overrides: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> None:
    """Append ``base``'s ``Args:`` section to ``cls.__doc__``, replacing some entries.

    Spec field descriptions come from the class docstring, so a variant that
    only pins a few fields documents the rest by reusing its base's text.

    Args:
        cls: The variant whose docstring is extended.
        base: The class whose ``Args:`` section is reused.
        overrides: New descriptions for some arguments.
        extra: Arguments the variant adds (listed first, in this order).

    """
    base_doc = inspect.cleandoc(base.__doc__ or "")
    _, _, args = base_doc.partition("\nArgs:\n")
    entries: list[tuple[str, list[str]]] = []
    for line in args.splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            name, _, text = line.strip().partition(":")
            entries.append((name, [text.strip()]))
        elif line.strip() and entries:
            entries[-1][1].append(line.strip())
    lines = ["Args:"]
    lines += [f"    {name}: {text}" for name, text in (extra or {}).items()]
    for name, parts in entries:
        lines.append(f"    {name}: {overrides.get(name, ' '.join(parts))}")
    cls.__doc__ = inspect.cleandoc(cls.__doc__ or "") + "\n\n" + "\n".join(lines) + "\n"
