"""Convert torchvision/timm MobileNetV2 state dicts to our MobileNetV2 classifier keys.

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

Registered as the ``mobilenet_v2`` entry point of ``pretrain.weight_converters``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pretrain.components import BaseWeightConverter
from pretrain_builtins.converters import KeyRule, Source, remap, unsupported

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["MobileNetV2Converter", "backbone_spec", "convert"]

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
