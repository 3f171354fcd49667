"""Convert torchvision/timm ResNet state dicts to our ResNet classifier keys.

Our ``ResNet`` keeps MMPretrain's layer names, which are torchvision's
(``conv1``, ``bn1``, ``layerN.i.convK``/``bnK``, ``layerN.0.downsample.{0,1}``),
so a V1b ResNet maps one to one: ``X → backbone.X`` and ``fc → head.fc``.
timm's deep-stem variants map to ours as well:

* ``resnet{depth}c`` (deep stem) → ``ResNetV1c``: timm's stem
  ``conv1 = Sequential(conv, bn, act, conv, bn, act, conv)`` followed by ``bn1``
  becomes ``stem.{0,1,2}.{conv,bn}``;
* ``resnet{depth}d`` (deep stem + average-pool shortcut) → ``ResNetV1d``: in
  addition, timm keeps an ``Identity`` in place of the pool when the stride is 1
  (``layer1``), so its ``downsample.{1,2}`` there is our ``downsample.{0,1}``.

Registered as the ``resnet`` entry point of ``pretrain.weight_converters``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pretrain.components import BaseWeightConverter
from pretrain_builtins.converters import KeyRule, Source, remap, unsupported

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["ResNetConverter", "backbone_spec", "convert", "parse_arch"]

_DEPTHS = (18, 34, 50, 101, 152)
_SUPPORTED = {
    "torchvision": [f"resnet{d}" for d in _DEPTHS],
    "timm": ["resnet{18,34,50,101,152}[c|d][.tag]"],
}

#: timm deep stem Sequential index -> our ``stem.<i>.<conv|bn>``.
_TIMM_STEM = {"0": "0.conv", "1": "0.bn", "3": "1.conv", "4": "1.bn", "6": "2.conv"}


def parse_arch(arch: str, source: str) -> tuple[int, str]:
    """Return ``(depth, variant)`` with variant ``""`` (V1b), ``"c"`` or ``"d"``.

    timm's pretrained tags (``resnet50.a1_in1k``) are accepted and ignored.

    Raises:
        WeightConversionError: Not a ResNet this converter handles for ``source``.

    """
    name = arch.split(".", 1)[0] if source == "timm" else arch
    match = re.fullmatch(r"resnet(\d+)([cd]?)", name)
    if match is None or int(match.group(1)) not in _DEPTHS:
        raise unsupported("resnet", source, arch, _SUPPORTED)
    variant = match.group(2)
    if variant and source != "timm":
        raise unsupported("resnet", source, arch, _SUPPORTED)
    return int(match.group(1)), variant


def backbone_spec(arch: str, source: Source) -> dict[str, Any]:
    """The backbone table whose keys the converted weights fill (for the CLI summary)."""
    depth, variant = parse_arch(arch, source)
    kind = {"": "ResNet", "c": "ResNetV1c", "d": "ResNetV1d"}[variant]
    return {"type": kind, "depth": depth}


def _rules(variant: str) -> list[KeyRule]:
    rules: list[KeyRule] = []
    if variant:
        rules += [
            # Indices 2 and 5 are activations (no tensors); anything else is unknown.
            KeyRule(
                r"conv1\.([01346])\.(.+)",
                lambda m: f"backbone.stem.{_TIMM_STEM[m.group(1)]}.{m.group(2)}",
            ),
            KeyRule(r"bn1\.(.+)", r"backbone.stem.2.bn.\1"),
        ]
    else:
        rules.append(KeyRule(r"(conv1|bn1)\.(.+)", r"backbone.\1.\2"))
    if variant == "d":
        # Stride-1 stage: timm's downsample is (Identity, conv, bn), ours (conv, bn).
        rules.append(
            KeyRule(
                r"layer1\.0\.downsample\.([12])\.(.+)",
                lambda m: f"backbone.layer1.0.downsample.{int(m.group(1)) - 1}.{m.group(2)}",
            )
        )
    rules += [
        KeyRule(r"(layer[1-4]\..+)", r"backbone.\1"),
        KeyRule(r"fc\.(weight|bias)", r"head.fc.\1"),
    ]
    return rules


def convert(
    state_dict: Mapping[str, Tensor], *, source: Source, arch: str
) -> dict[str, Tensor]:
    """Map a torchvision or timm ResNet state dict to ``backbone.*``/``head.fc.*`` keys.

    Args:
        state_dict: The source model's ``state_dict()``.
        source: ``torchvision`` or ``timm``.
        arch: ``resnet18``..``resnet152``; for timm also ``resnet50c``/``resnet50d``
            style deep-stem variants and pretrained tags (``resnet50.a1_in1k``).

    Returns:
        Our classifier's keys (``ResNet``/``ResNetV1c``/``ResNetV1d`` backbone,
        ``LinearClsHead`` head).

    Raises:
        WeightConversionError: Unknown arch/source or keys this mapping does not cover.

    """
    if source not in _SUPPORTED:
        raise unsupported("resnet", source, arch, _SUPPORTED)
    _, variant = parse_arch(arch, source)
    return remap(state_dict, _rules(variant), family="resnet", source=source, arch=arch)


class ResNetConverter(BaseWeightConverter):
    """torchvision ResNet-18..152; timm ResNets with V1b, deep-stem (c) and avg-down (d) stems."""

    architectures = {
        "torchvision": [r"resnet(18|34|50|101|152)"],
        "timm": [r"resnet(18|34|50|101|152)[cd]?"],
    }

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert`."""
        return convert(state_dict, source=source, arch=arch)  # type: ignore[arg-type]

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`backbone_spec`."""
        return backbone_spec(arch, source)  # type: ignore[arg-type]
