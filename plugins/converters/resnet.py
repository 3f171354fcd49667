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

ResNeXt and wide ResNets (``ResNeXtConverter``, torchvision and timm) share these keys;
timm's SE-ResNet(X)s (``SEResNetConverter``) add ``se.fc{1,2}`` (our ``se_layer.conv{1,2}.conv``).

Registered as the ``resnet``, ``resnext`` and ``seresnet`` entry points of
``pretrain.weight_converters``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pretrain.components import BaseWeightConverter
from pretrain_builtins.converters import KeyRule, Source, remap, unsupported

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "ResNeXtConverter",
    "ResNetConverter",
    "SEResNetConverter",
    "backbone_spec",
    "convert",
    "parse_arch",
    "resnext_backbone_spec",
    "seresnet_backbone_spec",
]

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


# --------------------------------------------------------------------------- ResNeXt, wide ResNet, SE-ResNet

_RESNEXT = re.compile(r"resnext(50|101|152)_(\d+)x(\d+)d")
_WIDE = re.compile(r"wide_resnet(50|101)_2")
_SERESNET = re.compile(r"seresnet(50|101|152)")
_SERESNEXT = re.compile(r"seresnext(50|101|152)_(\d+)x(\d+)d")
_SUPPORTED_X = {
    "torchvision": ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet{50,101}_2"],
    "timm": ["resnext{50,101,152}_{G}x{W}d[.tag]", "wide_resnet{50,101}_2[.tag]"],
}
_SUPPORTED_SE = {"timm": ["seresnet{50,101,152}[.tag]", "seresnext{50,101,152}_{G}x{W}d[.tag]"]}


def resnext_backbone_spec(arch: str, source: str) -> dict[str, Any]:
    """The ResNeXt / wide-ResNet backbone table whose keys the converted weights fill."""
    name = arch.split(".", 1)[0] if source == "timm" else arch
    if source in ("torchvision", "timm"):
        if m := _RESNEXT.fullmatch(name):
            return {"type": "ResNeXt", "depth": int(m.group(1)), "groups": int(m.group(2)),
                    "width_per_group": int(m.group(3))}
        if m := _WIDE.fullmatch(name):
            # MMPretrain's wide-resnet configs: ResNet with 128-wide bottlenecks of expansion 2.
            return {"type": "ResNet", "depth": int(m.group(1)), "base_channels": 128, "expansion": 2}
    raise unsupported("resnext", source, arch, _SUPPORTED_X)


def seresnet_backbone_spec(arch: str, source: str) -> dict[str, Any]:
    """The SE-ResNet / SE-ResNeXt backbone table whose keys the converted weights fill."""
    name = arch.split(".", 1)[0]
    if source == "timm":
        if m := _SERESNET.fullmatch(name):
            return {"type": "SEResNet", "depth": int(m.group(1))}
        if m := _SERESNEXT.fullmatch(name):
            return {"type": "SEResNeXt", "depth": int(m.group(1)), "groups": int(m.group(2)),
                    "width_per_group": int(m.group(3))}
    raise unsupported("seresnet", source, arch, _SUPPORTED_SE)


#: timm's SE module (``se.fc1``/``se.fc2``) -> our ``se_layer.conv{1,2}.conv``.
_SE_RULES = [
    KeyRule(r"(layer[1-4]\.\d+)\.se\.fc([12])\.(weight|bias)", r"backbone.\1.se_layer.conv\2.conv.\3"),
]


class ResNeXtConverter(BaseWeightConverter):
    """torchvision and timm ``resnext*_GxWd`` (ResNeXt) and ``wide_resnet*_2`` (ResNet, 2x width)."""

    architectures = {
        "torchvision": [r"resnext(50_32x4d|101_32x8d|101_64x4d)", _WIDE.pattern],
        "timm": [_RESNEXT.pattern, _WIDE.pattern],
    }

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """Same keys as a ResNet: ``X -> backbone.X``, ``fc -> head.fc``."""
        resnext_backbone_spec(arch, source)
        return remap(state_dict, _rules(""), family="resnext", source=source, arch=arch)

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`resnext_backbone_spec`."""
        return resnext_backbone_spec(arch, source)


class SEResNetConverter(BaseWeightConverter):
    """timm ``seresnet{50,101,152}`` and ``seresnext*_GxWd`` (torchvision has none)."""

    architectures = {"timm": [_SERESNET.pattern, _SERESNEXT.pattern]}

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """ResNet keys plus ``layerN.i.se.fc{1,2}`` -> ``backbone.layerN.i.se_layer.conv{1,2}.conv``."""
        seresnet_backbone_spec(arch, source)
        return remap(state_dict, _SE_RULES + _rules(""), family="seresnet", source=source, arch=arch)

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`seresnet_backbone_spec`."""
        return seresnet_backbone_spec(arch, source)
