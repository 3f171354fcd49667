"""Convert torchvision/timm MobileNetV2 and MobileNetV3 state dicts to our classifier keys.

Our ``MobileNetV2`` keeps MMPretrain's names: ``conv1`` (stem), ``layer1``..
``layer7`` (blocks of 1, 2, 3, 4, 3, 3, 1 inverted residuals), ``conv2`` (the
final 1×1 conv); inside a block ``conv.{k}.{conv,bn}`` for the expansion (absent
in ``layer1``), depthwise and projection convs.

* torchvision ``mobilenet_v2``: ``features.0`` is the stem, ``features.1..17``
  the blocks in order, ``features.18`` the final conv, ``classifier.1`` the Linear.
  Its blocks use ``conv.{k}.{0,1}`` for conv-BN-ReLU6 units and bare
  ``conv.{k}``/``conv.{k+1}`` for the projection conv and BN.
* timm ``mobilenetv2_{050,100,140}``: ``conv_stem``/``bn1``, ``blocks.{i}.{j}``
  (stage i = our ``layer{i+1}``; ``conv_dw``/``bn1``/``conv_pw``/``bn2`` in the
  first, depthwise-separable stage, ``conv_pw``/``bn1``/``conv_dw``/``bn2``/
  ``conv_pwl``/``bn3`` elsewhere), ``conv_head``/``bn2``, ``classifier``.

MobileNetV3 (``convert_v3``): torchvision ``mobilenet_v3_{small,large}`` (``features.0``
stem, ``features.{i}.block.{k}`` bnecks, the last ``features`` entry the final conv,
``classifier.{0,3}``) and timm ``mobilenetv3_{small,large}_100`` (``blocks.{s}.{j}``,
the final conv being timm's last block, ``conv_head``/``classifier``); the head is
MMPretrain's ``StackedLinearClsHead`` (hidden Linear + HSwish + dropout + Linear).

Registered as the ``mobilenet_v2`` and ``mobilenet_v3`` entry points of
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
    "MobileNetV2Converter",
    "MobileNetV3Converter",
    "backbone_spec",
    "convert",
    "convert_v3",
    "v3_backbone_spec",
    "v3_head_spec",
]

#: Blocks per stage (MobileNetV2 ``arch_settings``); stage 0 has no expansion conv.
_BLOCKS = (1, 2, 3, 4, 3, 3, 1)
#: torchvision ``features`` index (1..17) -> (stage, block) of ours.
_TV_BLOCK = dict(
    zip(
        range(1, sum(_BLOCKS) + 1),
        [(s, b) for s, n in enumerate(_BLOCKS) for b in range(n)],
        strict=True,
    )
)
_LAST_FEATURE = sum(_BLOCKS) + 1  # 18
_TIMM_WIDTHS = {"mobilenetv2_050": 0.5, "mobilenetv2_100": 1.0, "mobilenetv2_140": 1.4}
_SUPPORTED = {"torchvision": ["mobilenet_v2"], "timm": [*_TIMM_WIDTHS, "(with .tag)"]}

# Inside a block: source sub-key -> ours, without (stage 0) and with an expansion conv.
_TV_INNER_NO_EXPAND = {"0.0": "0.conv", "0.1": "0.bn", "1": "1.conv", "2": "1.bn"}
_TV_INNER_EXPAND = {
    "0.0": "0.conv", "0.1": "0.bn", "1.0": "1.conv", "1.1": "1.bn", "2": "2.conv", "3": "2.bn",
}
_TIMM_INNER_DS = {"conv_dw": "0.conv", "bn1": "0.bn", "conv_pw": "1.conv", "bn2": "1.bn"}
_TIMM_INNER_IR = {
    "conv_pw": "0.conv", "bn1": "0.bn", "conv_dw": "1.conv", "bn2": "1.bn",
    "conv_pwl": "2.conv", "bn3": "2.bn",
}
_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _timm_width(arch: str) -> float | None:
    return _TIMM_WIDTHS.get(arch.split(".", 1)[0])


def backbone_spec(arch: str, source: Source) -> dict[str, Any]:
    """The backbone table whose keys the converted weights fill (for the CLI summary)."""
    _check(arch, source)
    width = 1.0 if source == "torchvision" else _timm_width(arch)
    return {"type": "MobileNetV2", "widen_factor": width}


def _check(arch: str, source: str) -> None:
    ok = arch == "mobilenet_v2" if source == "torchvision" else (
        source == "timm" and _timm_width(arch) is not None
    )
    if not ok:
        raise unsupported("mobilenet_v2", source, arch, _SUPPORTED)


def _tv_block(match: re.Match[str]) -> str | None:
    index, inner, param = int(match.group(1)), match.group(2), match.group(3)
    if index not in _TV_BLOCK:
        return None
    stage, block = _TV_BLOCK[index]
    table = _TV_INNER_NO_EXPAND if stage == 0 else _TV_INNER_EXPAND
    target = table.get(inner)
    return None if target is None else f"backbone.layer{stage + 1}.{block}.conv.{target}.{param}"


def _timm_block(match: re.Match[str]) -> str | None:
    stage, block, name, param = int(match.group(1)), int(match.group(2)), *match.group(3, 4)
    if not (0 <= stage < len(_BLOCKS) and block < _BLOCKS[stage]):
        return None
    table = _TIMM_INNER_DS if stage == 0 else _TIMM_INNER_IR
    target = table.get(name)
    return None if target is None else f"backbone.layer{stage + 1}.{block}.conv.{target}.{param}"


def _rules(source: str) -> list[KeyRule]:
    if source == "torchvision":
        return [
            KeyRule(rf"features\.0\.0\.{_PARAM}", r"backbone.conv1.conv.\1"),
            KeyRule(rf"features\.0\.1\.{_PARAM}", r"backbone.conv1.bn.\1"),
            KeyRule(rf"features\.(\d+)\.conv\.([\d.]+?)\.{_PARAM}", _tv_block),
            KeyRule(rf"features\.{_LAST_FEATURE}\.0\.{_PARAM}", r"backbone.conv2.conv.\1"),
            KeyRule(rf"features\.{_LAST_FEATURE}\.1\.{_PARAM}", r"backbone.conv2.bn.\1"),
            KeyRule(r"classifier\.1\.(weight|bias)", r"head.fc.\1"),
        ]
    return [
        KeyRule(rf"conv_stem\.{_PARAM}", r"backbone.conv1.conv.\1"),
        KeyRule(rf"bn1\.{_PARAM}", r"backbone.conv1.bn.\1"),
        KeyRule(rf"blocks\.(\d+)\.(\d+)\.(\w+?)\.{_PARAM}", _timm_block),
        KeyRule(rf"conv_head\.{_PARAM}", r"backbone.conv2.conv.\1"),
        KeyRule(rf"bn2\.{_PARAM}", r"backbone.conv2.bn.\1"),
        KeyRule(r"classifier\.(weight|bias)", r"head.fc.\1"),
    ]


def convert(
    state_dict: Mapping[str, Tensor], *, source: Source, arch: str
) -> dict[str, Tensor]:
    """Map a torchvision or timm MobileNetV2 state dict to ``backbone.*``/``head.fc.*`` keys.

    Args:
        state_dict: The source model's ``state_dict()``.
        source: ``torchvision`` or ``timm``.
        arch: ``mobilenet_v2`` (torchvision) or ``mobilenetv2_{050,100,140}`` (timm,
            optionally with a pretrained tag such as ``.ra_in1k``).

    Returns:
        Our classifier's keys (``MobileNetV2`` backbone, ``LinearClsHead`` head).

    Raises:
        WeightConversionError: Unknown arch/source or keys this mapping does not cover.

    """
    _check(arch, source)
    return remap(state_dict, _rules(source), family="mobilenet_v2", source=source, arch=arch)


class MobileNetV2Converter(BaseWeightConverter):
    """torchvision ``mobilenet_v2``; timm ``mobilenetv2_{050,100,140}``."""

    architectures = {"torchvision": [r"mobilenet_v2"], "timm": [r"mobilenetv2_(050|100|140)"]}

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert`."""
        return convert(state_dict, source=source, arch=arch)  # type: ignore[arg-type]

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`backbone_spec`."""
        return backbone_spec(arch, source)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- MobileNetV3

_V3_TV = re.compile(r"mobilenet_v3_(small|large)")
_V3_TIMM = re.compile(r"mobilenetv3_(small|large)_100")
_SUPPORTED_V3 = {"torchvision": ["mobilenet_v3_small", "mobilenet_v3_large"],
                 "timm": ["mobilenetv3_small_100", "mobilenetv3_large_100"]}
#: The stacked head of MMPretrain's MobileNetV3 configs (= torchvision's classifier).
_V3_HIDDEN = {"small": 1024, "large": 1280}


def v3_backbone_spec(arch: str, source: str) -> dict[str, Any]:
    """The MobileNetV3 backbone table whose keys the converted weights fill."""
    name = arch.split(".", 1)[0]
    m = (_V3_TV if source == "torchvision" else _V3_TIMM).fullmatch(name)
    if m is None or source not in _SUPPORTED_V3:
        raise unsupported("mobilenet_v3", source, arch, _SUPPORTED_V3)
    spec: dict[str, Any] = {"type": "MobileNetV3", "arch": m.group(1)}
    if source == "timm":  # timm's own MobileNetV3 weights use PyTorch's BatchNorm epsilon
        spec["norm_cfg"] = {"type": "BN", "eps": 1e-5, "momentum": 0.1}
    return spec


def v3_head_spec(arch: str) -> dict[str, Any]:
    """The ``StackedLinearClsHead`` table the converted ``head.*`` keys fill (MMPretrain's head)."""
    size = "small" if "small" in arch else "large"
    return {"type": "StackedLinearClsHead", "num_classes": 1000, "in_channels": 576 if size == "small" else 960,
            "mid_channels": [_V3_HIDDEN[size]], "dropout_rate": 0.2, "act": "HSwish"}


def convert_v3(state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
    """Map a torchvision or timm MobileNetV3 state dict to our keys.

    The backbone is ``MobileNetV3`` (``layer0`` stem, ``layer1..N`` bnecks, ``layer{N+1}``
    final conv); the classifier becomes MMPretrain's ``StackedLinearClsHead``
    (``head.layers.0.fc`` hidden Linear, ``head.layers.1.fc`` output). timm's 1×1
    ``conv_head`` (hidden, C, 1, 1) is viewed as the (hidden, C) Linear weight.

    Args:
        state_dict: The source model's ``state_dict()``.
        source: ``torchvision`` or ``timm``.
        arch: ``mobilenet_v3_{small,large}`` (torchvision) or ``mobilenetv3_{small,large}_100`` (timm).

    Returns:
        Our classifier's keys (tensors shared, not copied).

    Raises:
        WeightConversionError: Unknown arch/source or keys this mapping does not cover.

    """
    import torch

    from pretrain_builtins.backbones.mobilenet_v3 import MobileNetV3
    from pretrain_builtins.converters.efficientnet import TIMM_BLOCKS, map_blocks

    spec = v3_backbone_spec(arch, source)
    with torch.device("meta"):
        backbone = MobileNetV3(**{k: v for k, v in spec.items() if k != "type"})
    last = len(backbone.layers) - 1  # the final 1x1 conv
    bnecks = [(f"backbone.{name}", getattr(backbone, name)) for name in backbone.layers[1:last]]
    if source == "torchvision":
        pattern = r"features\.(?P<s>\d+)\.(?P<rest>block\..+)"
        rules = [
            KeyRule(rf"features\.0\.0\.{_PARAM}", r"backbone.layer0.conv.\1"),
            KeyRule(rf"features\.0\.1\.{_PARAM}", r"backbone.layer0.bn.\1"),
            KeyRule(rf"features\.{last}\.0\.{_PARAM}", rf"backbone.layer{last}.conv.\1"),
            KeyRule(rf"features\.{last}\.1\.{_PARAM}", rf"backbone.layer{last}.bn.\1"),
            KeyRule(r"classifier\.0\.(weight|bias)", r"head.layers.0.fc.\1"),
            KeyRule(r"classifier\.3\.(weight|bias)", r"head.layers.1.fc.\1"),
        ]
        table = map_blocks(state_dict, pattern, bnecks, layout="torchvision", family="mobilenet_v3",
                           source=source, arch=arch)
    else:
        pattern = TIMM_BLOCKS
        rules = [
            KeyRule(rf"conv_stem\.{_PARAM}", r"backbone.layer0.conv.\1"),
            KeyRule(rf"bn1\.{_PARAM}", r"backbone.layer0.bn.\1"),
            KeyRule(r"conv_head\.(weight|bias)", r"head.layers.0.fc.\1"),
            KeyRule(r"classifier\.(weight|bias)", r"head.layers.1.fc.\1"),
        ]
        # timm keeps the final 1x1 conv as its last block.
        final = (f"backbone.layer{last}", getattr(backbone, f"layer{last}"))
        table = map_blocks(state_dict, pattern, [*bnecks, final], layout="timm", family="mobilenet_v3",
                           source=source, arch=arch)
    rules.insert(0, KeyRule(pattern, lambda m: table.get(m.group(0))))
    out = remap(state_dict, rules, family="mobilenet_v3", source=source, arch=arch)
    weight = out.get("head.layers.0.fc.weight")
    if weight is not None and weight.dim() == 4:
        out["head.layers.0.fc.weight"] = weight.flatten(1)  # (hidden, C, 1, 1) -> (hidden, C), a view
    return out


class MobileNetV3Converter(BaseWeightConverter):
    """torchvision ``mobilenet_v3_{small,large}``; timm ``mobilenetv3_{small,large}_100``."""

    architectures = {"torchvision": [_V3_TV.pattern], "timm": [_V3_TIMM.pattern]}

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert_v3`."""
        return convert_v3(state_dict, source=source, arch=arch)

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`v3_backbone_spec`."""
        return v3_backbone_spec(arch, source)
