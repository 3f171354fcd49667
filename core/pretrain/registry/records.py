"""What the registry knows about a component before (or without) importing it (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EntryRecord", "LoadFailure"]


@dataclass(frozen=True)
class EntryRecord:
    """One registered component, as known before (or without) importing it.

    Attributes:
        kind: Component kind (``backbone``, ``loss``, ...).
        name: The spec ``type`` value.
        value: ``module:attr`` it points at (``<runtime>`` for in-process registrations).
        distribution: Distribution that provides it.
        version: That distribution's version.
        source: ``entry-point``, ``hook`` (pluggy) or ``runtime`` (``register``).

    """

    kind: str
    name: str
    value: str
    distribution: str
    version: str
    source: str = "entry-point"

    @property
    def qualified_name(self) -> str:
        """``distribution:Name``, unique even when the bare name is not."""
        return f"{self.distribution}:{self.name}"

    @property
    def module(self) -> str:
        """The module part of :attr:`value`."""
        return self.value.partition(":")[0]


@dataclass(frozen=True)
class LoadFailure:
    """A component that could not be loaded, and why."""

    record: EntryRecord
    error: str

    def describe(self) -> str:
        """One line naming distribution, version, entry point and error."""
        r = self.record
        return (
            f"{r.kind} {r.name!r} from distribution {r.distribution} {r.version} "
            f"(entry point {r.name} = {r.value}): {self.error}"
        )
