"""Error types. Every one renders as a short paragraph: what, where, how to fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ComponentLookupError",
    "PluginError",
    "PluginLoadError",
    "PretrainError",
    "SpecError",
    "SpecIssue",
    "close_matches",
    "did_you_mean",
]


def close_matches(word: str, options: Iterable[str], n: int = 2) -> list[str]:
    """Options close to ``word``: by spelling, else ignoring case (``resnet`` -> ``ResNet``)."""
    options = list(dict.fromkeys(options))
    close = difflib.get_close_matches(word, options, n=n, cutoff=0.6)
    if close:
        return close
    lowered = {o.lower(): o for o in options}
    return [lowered[c] for c in difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)]


def did_you_mean(word: str, options: Iterable[str], n: int = 2) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the options close to ``word``, else ``""``.

    The one did-you-mean of the code base: spec fields, types, sections, CLI names.
    """
    close = close_matches(word, options, n)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class PretrainError(Exception):
    """Base class of the errors the CLI prints without a traceback.

    Args:
        message: What went wrong and where.
        hint: How to fix it (optional, printed on its own line).

    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n{self.hint}"


@dataclass(frozen=True)
class SpecIssue:
    """One validation problem: ``loc`` is a dotted spec path (``model.head.in_channels``)."""

    loc: str
    msg: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.msg}" if self.loc else self.msg

    def to_json(self) -> dict[str, str]:
        """Return ``{"loc": ..., "msg": ...}``."""
        return {"loc": self.loc, "msg": self.msg}


class SpecError(PretrainError):
    """A spec failed validation; carries every issue found, not just the first."""

    def __init__(self, issues: Iterable[SpecIssue], *, source: str | None = None) -> None:
        self.issues = list(issues)
        self.source = source
        where = f" in {source}" if source else ""
        n = len(self.issues)
        lines = [f"The spec{where} is invalid ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))


class ComponentLookupError(PretrainError):
    """A ``type`` that names no installed component, or names several."""


class PluginLoadError(PretrainError):
    """A plugin entry point that could not be imported or is not a valid component."""


class PluginError(PretrainError):
    """Code of an installed plugin raised while running (a hook, a component's forward).

    The message names the plugin's distribution and version, so the report goes to
    its authors rather than to pretrain.
    """
