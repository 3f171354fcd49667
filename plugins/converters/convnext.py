"""Convert torchvision/timm ConvNeXt (v1, v2) state dicts to our ConvNeXt classifier keys.

Our ``ConvNeXt`` keeps MMPretrain's names: ``downsample_layers.0`` the stem
(``0`` conv, ``1`` LayerNorm), ``downsample_layers.{1,2,3}`` (``0`` LayerNorm, ``1``
conv), ``stages.{i}.{j}.{depthwise_conv, norm, pointwise_conv1, pointwise_conv2,
gamma, grn.gamma, grn.beta}``, ``norm3`` the final norm (after global pooling);
``head.fc`` is the ``LinearClsHead``.

* torchvision ``convnext_{tiny,small,base,large}``: ``features.0`` stem, odd
  ``features.{2i+1}.{j}`` blocks (``block.0`` dw conv, ``block.2`` LayerNorm, ``block.3``/
  ``block.5`` Linears, ``layer_scale`` (C, 1, 1), viewed as our (C,) ``gamma``), even
  ``features.{2i}`` downsampling, ``classifier.0`` norm, ``classifier.2`` Linear.
* timm ``convnext_*`` and ``convnextv2_*``: ``stem.{0,1}``, ``stages.{i}.downsample.{0,1}``,
  ``stages.{i}.blocks.{j}.{conv_dw, norm, mlp.fc1, mlp.grn, mlp.fc2, gamma}``,
  ``head.norm``, ``head.fc``. The atto..nano sizes use 1×1-conv MLPs there
  (``linear_pw_conv = false`` in the matching spec).

Registered as the ``convnext`` entry point of ``pretrain.weight_converters``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pretrain.components import BaseWeightConverter
from pretrain_builtins.converters import KeyRule, remap, unsupported

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["ConvNeXtConverter", "backbone_spec", "convert", "parse_arch"]

_TV_ARCHS = ("tiny", "small", "base", "large")
_TIMM_V1 = ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge")
_TIMM_V2 = ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "huge")
#: timm builds these sizes with 1×1-conv MLPs (``conv_mlp=True``).
_TIMM_CONV_MLP = ("atto", "femto", "pico", "nano")
_TV_NAME = re.compile(rf"convnext_({'|'.join(_TV_ARCHS)})")
_TIMM_NAME = re.compile(rf"convnext_({'|'.join(_TIMM_V1)})|convnextv2_({'|'.join(_TIMM_V2)})")
_SUPPORTED = {
    "torchvision": [f"convnext_{a}" for a in _TV_ARCHS],
    "timm": [f"convnext_{{{','.join(_TIMM_V1)}}}[.tag]", f"convnextv2_{{{','.join(_TIMM_V2)}}}[.tag]"],
}
_P = r"(weight|bias)"
_NUM_STAGES = 4


def parse_arch(arch: str, source: str) -> tuple[str, bool]:
    """Return ``(our arch preset, is_v2)``.

    Raises:
        WeightConversionError: Not a ConvNeXt this converter handles for ``source``.

    """
    name = arch.split(".", 1)[0]
    if source == "torchvision" and (m := _TV_NAME.fullmatch(arch)):
        return m.group(1), False
    if source == "timm" and (m := _TIMM_NAME.fullmatch(name)):
        return (m.group(1), False) if m.group(1) else (m.group(2), True)
    raise unsupported("convnext", source, arch, _SUPPORTED)


def backbone_spec(arch: str, source: str) -> dict[str, Any]:
    """The backbone table whose keys the converted weights fill (for the CLI summary)."""
    preset, v2 = parse_arch(arch, source)
    spec: dict[str, Any] = {"type": "ConvNeXt", "arch": preset}
    if source == "timm" and preset in _TIMM_CONV_MLP:
        spec["linear_pw_conv"] = False
    if v2:
        spec.update(use_grn=True, layer_scale_init_value=0.0)
    return spec


def _tv_feature(match: re.Match[str]) -> str | None:
    index, rest = int(match.group(1)), match.group(2)
    if index == 0:
        return f"backbone.downsample_layers.0.{rest}" if re.fullmatch(rf"[01]\.{_P}", rest) else None
    if index % 2 == 0:  # downsampling between stages: (LayerNorm, conv)
        return f"backbone.downsample_layers.{index // 2}.{rest}" if re.fullmatch(rf"[01]\.{_P}", rest) else None
    stage = index // 2
    m = re.fullmatch(r"(\d+)\.(?:block\.([0235])\.(weight|bias)|(layer_scale))", rest)
    if m is None:
        return None
    block, layer, param, scale = m.groups()
    if scale:
        return f"backbone.stages.{stage}.{block}.gamma"
    name = {"0": "depthwise_conv", "2": "norm", "3": "pointwise_conv1", "5": "pointwise_conv2"}[layer]
    return f"backbone.stages.{stage}.{block}.{name}.{param}"


_TV_RULES = [
    KeyRule(r"features\.(\d+)\.(.+)", _tv_feature),
    KeyRule(rf"classifier\.0\.{_P}", rf"backbone.norm{_NUM_STAGES - 1}.\1"),
    KeyRule(rf"classifier\.2\.{_P}", r"head.fc.\1"),
]

_TIMM_BLOCK = {
    "conv_dw": "depthwise_conv", "norm": "norm", "mlp.fc1": "pointwise_conv1",
    "mlp.fc2": "pointwise_conv2",
}
_TIMM_RULES = [
    KeyRule(rf"stem\.([01])\.{_P}", r"backbone.downsample_layers.0.\1.\2"),
    KeyRule(rf"stages\.([1-9])\.downsample\.([01])\.{_P}", r"backbone.downsample_layers.\1.\2.\3"),
    KeyRule(
        rf"stages\.(\d+)\.blocks\.(\d+)\.(conv_dw|norm|mlp\.fc1|mlp\.fc2)\.{_P}",
        lambda m: f"backbone.stages.{m.group(1)}.{m.group(2)}.{_TIMM_BLOCK[m.group(3)]}.{m.group(4)}",
    ),
    KeyRule(r"stages\.(\d+)\.blocks\.(\d+)\.gamma", r"backbone.stages.\1.\2.gamma"),
    KeyRule(r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight", r"backbone.stages.\1.\2.grn.gamma"),
    KeyRule(r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias", r"backbone.stages.\1.\2.grn.beta"),
    KeyRule(rf"head\.norm\.{_P}", rf"backbone.norm{_NUM_STAGES - 1}.\1"),
    KeyRule(rf"head\.fc\.{_P}", r"head.fc.\1"),
]


def convert(state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
    """Map a torchvision or timm ConvNeXt state dict to ``backbone.*``/``head.fc.*`` keys.

    torchvision's (C, 1, 1) layer scales become (C,) views of the same storage.

    Args:
        state_dict: The source model's ``state_dict()``.
        source: ``torchvision`` or ``timm``.
        arch: ``convnext_tiny`` ... (torchvision), ``convnext_*``/``convnextv2_*`` (timm,
            optionally with a pretrained tag).

    Returns:
        Our classifier's keys (``ConvNeXt`` backbone with ``gap_before_final_norm``,
        ``LinearClsHead`` head).

    Raises:
        WeightConversionError: Unknown arch/source or keys this mapping does not cover.

    """
    parse_arch(arch, source)
    rules = _TV_RULES if source == "torchvision" else _TIMM_RULES
    out = remap(state_dict, rules, family="convnext", source=source, arch=arch)
    return {k: v.reshape(-1) if k.endswith(".gamma") and v.dim() == 3 else v for k, v in out.items()}


class ConvNeXtConverter(BaseWeightConverter):
    """torchvision ``convnext_{tiny,small,base,large}``; timm ``convnext_*`` and ``convnextv2_*``."""

    architectures = {"torchvision": [_TV_NAME.pattern], "timm": [_TIMM_NAME.pattern]}

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert`."""
        return convert(state_dict, source=source, arch=arch)

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`backbone_spec`."""
        return backbone_spec(arch, source)
