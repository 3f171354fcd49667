"""Error types. Every one renders as a short paragraph: what, where, how to fix."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ComponentLookupError",
    "PluginLoadError",
    "PretrainError",
    "SpecError",
    "SpecIssue",
]


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
