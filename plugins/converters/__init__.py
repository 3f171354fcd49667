"""Weight converters: torchvision/timm state dicts → our ``ImageClassifier`` keys.

A converter is registered in the ``pretrain.weight_converters`` entry-point
group under an architecture *family* name (``resnet``, ``mobilenet_v2``,
``vit``) and has the signature::

    def convert(state_dict: dict[str, Tensor], *, source: Literal["torchvision", "timm"],
                arch: str) -> dict[str, Tensor]

It returns keys of our classifier: ``backbone.*`` for the backbone and
``head.fc.*`` for the ``LinearClsHead`` classifier. Converters are pure key
mappers (tensors are passed through, never copied or modified) and must fail
on any source key they do not understand, naming it, rather than drop it.

This module holds the small toolkit they share: :class:`KeyRule` lists applied
by :func:`remap`, and :func:`unsupported` for a clear error on an unknown
``arch``/``source`` pair. Torch is only needed for the ``Tensor`` annotation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pretrain.errors import PretrainError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["KeyRule", "Source", "WeightConversionError", "remap", "unsupported"]

#: Where a state dict comes from.
Source = Literal["torchvision", "timm"]

#: A rule's replacement: a ``re`` template (``backbone.\\1``), a function of the
#: match returning the new key (or ``None``: "not mine after all", so the key stays
#: unknown unless a later rule takes it), or ``None`` to drop the key on purpose.
Replacement = str | Callable[[re.Match[str]], str | None] | None


class WeightConversionError(PretrainError):
    """A state dict cannot be converted (unknown keys, wrong arch or source)."""


@dataclass(frozen=True)
class KeyRule:
    """Rename every key that fully matches ``pattern``.

    Attributes:
        pattern: Regular expression that must match the whole source key.
        replacement: ``re`` template, function of the match, or ``None`` (drop).

    """

    pattern: str
    replacement: Replacement

    def apply(self, key: str) -> tuple[bool, str | None]:
        """Return ``(matched, new_key)``; ``new_key`` is ``None`` when dropped or unmatched."""
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return False, None
        if self.replacement is None:
            return True, None
        if isinstance(self.replacement, str):
            return True, match.expand(self.replacement)
        new_key = self.replacement(match)
        return new_key is not None, new_key


def _preview(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def remap(
    state_dict: Mapping[str, Tensor],
    rules: Iterable[KeyRule],
    *,
    family: str,
    source: str,
    arch: str,
) -> dict[str, Tensor]:
    """Rename every key of ``state_dict`` with the first rule that matches it.

    Args:
        state_dict: Source tensors.
        rules: Rules tried in order; the first full match wins.
        family: Converter family, for messages (``resnet``).
        source: Source library, for messages.
        arch: Architecture name, for messages.

    Returns:
        A new dict with our keys (the tensors themselves are not copied).

    Raises:
        WeightConversionError: Some keys match no rule, or two keys map to one.

    """
    rules = list(rules)
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        for rule in rules:
            matched, new_key = rule.apply(key)
            if not matched:
                continue
            if new_key is not None:
                if new_key in out:
                    raise WeightConversionError(
                        f"{family} converter: both {origin[new_key]!r} and {key!r} map to "
                        f"{new_key!r} (arch {arch!r}, source {source!r}).",
                        hint="This is a converter bug; please report it with the arch name.",
                    )
                out[new_key] = tensor
                origin[new_key] = key
            break
        else:
            unknown.append(key)
    if unknown:
        raise WeightConversionError(
            f"{family} converter: {len(unknown)} key(s) of the {source} {arch!r} state dict "
            f"are not understood: {_preview(unknown)}.",
            hint=(
                f"Check that --from {source} and --arch {arch} describe the checkpoint (a "
                "different variant has different layers), and that the file is a plain state "
                "dict rather than a training checkpoint with extra entries."
            ),
        )
    return out


def unsupported(family: str, source: str, arch: str, supported: Mapping[str, Iterable[str]]) -> WeightConversionError:
    """The error for an ``arch``/``source`` pair a converter does not handle.

    Args:
        family: Converter family.
        source: The requested source.
        arch: The requested architecture.
        supported: ``{source: [arch names or patterns]}`` the converter accepts.

    Returns:
        The exception to raise.

    """
    options = "; ".join(f"{src}: {', '.join(names)}" for src, names in supported.items())
    return WeightConversionError(
        f"the {family} converter cannot convert {source} arch {arch!r}.",
        hint=f"Supported: {options}.",
    )
