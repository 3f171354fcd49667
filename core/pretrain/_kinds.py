"""Component kinds and their entry-point groups (torch-free, imported by listing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["KINDS", "PLUGIN_GROUP", "ComponentRef", "group_of", "kind_of_group"]

#: kind -> entry-point group. The entry-point *name* is the spec's ``type``.
KINDS: Final[dict[str, str]] = {
    "model": "pretrain.models",
    "backbone": "pretrain.backbones",
    "neck": "pretrain.necks",
    "head": "pretrain.heads",
    "loss": "pretrain.losses",
    "target_generator": "pretrain.target_generators",
    "batch_augment": "pretrain.batch_augments",
    "dataset": "pretrain.datasets",
    "transform": "pretrain.transforms",
}

#: pluggy behavioural hooks live in their own group.
PLUGIN_GROUP: Final = "pretrain.plugins"

_GROUP_TO_KIND: Final[dict[str, str]] = {group: kind for kind, group in KINDS.items()}


def group_of(kind: str) -> str:
    """Return the entry-point group of ``kind``."""
    return KINDS[kind]


def kind_of_group(group: str) -> str | None:
    """Return the kind whose entry-point group is ``group``, if any."""
    return _GROUP_TO_KIND.get(group)


@dataclass(frozen=True)
class ComponentRef:
    """Marks a constructor parameter as a nested component spec of ``kind``.

    Used as ``Annotated[nn.Module, ComponentRef("loss")]``; the spec value is a
    table with a ``type`` and is validated (and built) recursively.
    """

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown component kind {self.kind!r}; known: {', '.join(KINDS)}")
