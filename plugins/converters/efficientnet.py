"""Convert torchvision/timm EfficientNet and EfficientNetV2 state dicts to our classifier keys.

Our backbones keep MMPretrain's names: ``layers.0`` the stem, ``layers.{i}.{j}`` the
blocks, the last layer the final 1×1 conv (each conv a ``conv``/``bn`` pair); blocks
are ``MBConv`` (``expand_conv``, ``depthwise_conv``, ``se.conv{1,2}.conv``,
``linear_conv``), ``EdgeResidual`` (``conv1``, ``se``, ``conv2``) or a single conv.
Both libraries number their blocks stage by stage, and our layers hold the same blocks
in the same order (EfficientNet merges some stages into one layer), so block ``n`` of
the source is block ``n`` of ours; the layout inside a block is recognised from its
keys:

* torchvision ``features.{s}.{j}.block.{k}`` (conv-BN units ``.0``/``.1``; SE ``fc1``/
  ``fc2``), stem ``features.0``, final conv ``features.{last}``, ``classifier.1``;
* timm ``blocks.{s}.{j}`` with ``conv_dw``/``conv_pw`` (depthwise-separable),
  ``conv_pw``/``conv_dw``/``conv_pwl`` (inverted residual), ``conv_exp``/``conv_pwl``
  (edge residual) or ``conv`` (plain conv), each followed by ``bn1``/``bn2``/``bn3`` and
  ``se.conv_reduce``/``se.conv_expand``; ``conv_stem``/``bn1``, ``conv_head``/``bn2``,
  ``classifier``.

:func:`map_blocks` does this block matching for any backbone built from these blocks
(the MobileNetV3 converter uses it too). The matching spec sets ``conv_cfg``/``norm_cfg``
to the source's padding and BatchNorm epsilon: torchvision and timm's ``efficientnet_*``
pad symmetrically (eps 1e-5 in V1), timm's ``tf_*`` ports pad "same" (eps 1e-3).

Registered as the ``efficientnet`` and ``efficientnet_v2`` entry points of
``pretrain.weight_converters``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pretrain.components import BaseWeightConverter
from pretrain_builtins.converters import KeyRule, WeightConversionError, remap, unsupported

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "TIMM_BLOCKS",
    "EfficientNetConverter",
    "EfficientNetV2Converter",
    "backbone_spec",
    "convert",
    "map_blocks",
    "our_conv_units",
]

_P = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
#: timm's block keys (``blocks.{stage}.{block}.<rest>``) for :func:`map_blocks`.
TIMM_BLOCKS = r"blocks\.(?P<s>\d+)\.(?P<b>\d+)\.(?P<rest>.+)"
_SYMMETRIC = {"type": "Conv2d"}

# --------------------------------------------------------------------------- names

_V1_TV = re.compile(r"efficientnet_(b[0-7])")
_V1_TIMM = re.compile(r"(tf_)?efficientnet_(b[0-8]|es|em|l2)")
_V2_TV = re.compile(r"efficientnet_v2_(s|m|l)")
_V2_TIMM = re.compile(r"tf_efficientnetv2_(s|m|l|xl|b[0-3])")
_SUPPORTED_V1 = {
    "torchvision": ["efficientnet_b{0..7}"],
    "timm": ["efficientnet_{b0..b8,es,em,l2}", "tf_efficientnet_{b0..b8,es,em,l2}"],
}
_SUPPORTED_V2 = {
    "torchvision": ["efficientnet_v2_{s,m,l}"],
    "timm": ["tf_efficientnetv2_{s,m,l,xl,b0..b3}"],
}


def backbone_spec(arch: str, source: str) -> dict[str, Any]:
    """The backbone table (padding and BN epsilon included) the converted weights fit."""
    name = arch.split(".", 1)[0]
    if source == "torchvision" and (m := _V1_TV.fullmatch(name)):
        return {"type": "EfficientNet", "arch": m.group(1), "conv_cfg": _SYMMETRIC,
                "norm_cfg": {"type": "BN", "eps": 1e-5}}
    if source == "timm" and (m := _V1_TIMM.fullmatch(name)):
        spec: dict[str, Any] = {"type": "EfficientNet", "arch": m.group(2)}
        if not m.group(1):  # timm's own (not TensorFlow-ported) weights
            spec.update(conv_cfg=_SYMMETRIC, norm_cfg={"type": "BN", "eps": 1e-5})
        if m.group(2) in ("es", "em"):  # EdgeTPU models use ReLU
            spec["act_cfg"] = {"type": "ReLU"}
        return spec
    if source == "torchvision" and (m := _V2_TV.fullmatch(name)):
        return {"type": "EfficientNetV2", "arch": m.group(1), "conv_cfg": _SYMMETRIC}
    if source == "timm" and (m := _V2_TIMM.fullmatch(name)):
        return {"type": "EfficientNetV2", "arch": m.group(1)}
    v2 = "v2" in name
    raise unsupported("efficientnet_v2" if v2 else "efficientnet", source, arch,
                      _SUPPORTED_V2 if v2 else _SUPPORTED_V1)


# --------------------------------------------------------------------------- blocks


def our_conv_units(module: nn.Module) -> list[str]:
    """The conv-BN units of one of our blocks in forward order (``""``: the block is one unit)."""
    if hasattr(module, "linear_conv"):  # MBConv / MobileNetV3 bneck
        expand = ["expand_conv"] if getattr(module, "with_expand_conv", False) else []
        return [*expand, "depthwise_conv", "linear_conv"]
    if hasattr(module, "conv1") and hasattr(module, "conv2"):  # EdgeResidual
        return ["conv1", "conv2"]
    return [""]  # a single conv-BN(-act) module


def _unit(prefix: str, unit: str) -> str:
    return f"{prefix}.{unit}" if unit else prefix


#: timm block layouts: set of conv names -> conv name in forward order -> its BN.
_TIMM_LAYOUTS: list[tuple[frozenset[str], list[tuple[str, str]]]] = [
    (frozenset({"conv_pw", "conv_dw", "conv_pwl"}), [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")]),
    (frozenset({"conv_dw", "conv_pw"}), [("conv_dw", "bn1"), ("conv_pw", "bn2")]),
    (frozenset({"conv_exp", "conv_pwl"}), [("conv_exp", "bn1"), ("conv_pwl", "bn2")]),
    (frozenset({"conv"}), [("conv", "bn1")]),
]


def _block_keys_timm(sub: Sequence[str], prefix: str, target: nn.Module, where: str) -> dict[str, str]:
    convs = {k.split(".", 1)[0] for k in sub if k.startswith("conv")}
    layout = next((order for names, order in _TIMM_LAYOUTS if names == convs), None)
    units = our_conv_units(target)
    if layout is None or len(layout) != len(units):
        raise WeightConversionError(
            f"timm block {where} ({', '.join(sorted(convs))}) does not match our {type(target).__name__} "
            f"at {prefix} ({len(units)} conv units).",
            hint="Check --arch: the checkpoint is probably another variant or size.",
        )
    out: dict[str, str] = {}
    for (conv, bn), unit in zip(layout, units, strict=True):
        for key in sub:
            head, _, param = key.partition(".")
            if head == conv:
                out[key] = f"{_unit(prefix, unit)}.conv.{param}"
            elif head == bn:
                out[key] = f"{_unit(prefix, unit)}.bn.{param}"
    for key in sub:
        if key.startswith("se.conv_reduce."):
            out[key] = f"{prefix}.se.conv1.conv.{key.rsplit('.', 1)[1]}"
        elif key.startswith("se.conv_expand."):
            out[key] = f"{prefix}.se.conv2.conv.{key.rsplit('.', 1)[1]}"
    return out


def _block_keys_tv(sub: Sequence[str], prefix: str, target: nn.Module, where: str) -> dict[str, str]:
    # torchvision: "block.{k}.{0|1}.param" (conv-BN units) and "block.{k}.fc{1|2}.param" (SE).
    conv_units = sorted({int(k.split(".")[1]) for k in sub if re.fullmatch(r"block\.\d+\.0\.weight", k)})
    units = our_conv_units(target)
    if len(conv_units) != len(units):
        raise WeightConversionError(
            f"torchvision block {where} has {len(conv_units)} conv units, our {type(target).__name__} "
            f"at {prefix} has {len(units)}.",
            hint="Check --arch: the checkpoint is probably another variant or size.",
        )
    slot = dict(zip(conv_units, units, strict=True))
    out: dict[str, str] = {}
    for key in sub:
        m = re.fullmatch(r"block\.(\d+)\.(0|1|fc1|fc2)\.(\w+)", key)
        if m is None:
            continue
        k, part, param = int(m.group(1)), m.group(2), m.group(3)
        if part in ("fc1", "fc2"):
            out[key] = f"{prefix}.se.conv{part[-1]}.conv.{param}"
        elif k in slot:
            out[key] = f"{_unit(prefix, slot[k])}.{'conv' if part == '0' else 'bn'}.{param}"
    return out


def map_blocks(
    state_dict: Mapping[str, Tensor],
    block_pattern: str,
    targets: Sequence[tuple[str, nn.Module]],
    *,
    layout: str,
    family: str,
    source: str,
    arch: str,
) -> dict[str, str]:
    """Map the keys of every source block onto ``targets``, block ``n`` to block ``n``.

    Args:
        state_dict: The source state dict.
        block_pattern: Regex with the named groups ``s`` (stage index), ``b`` (block in
            the stage, optional) and ``rest`` (the key inside the block).
        targets: Our blocks in order, as ``(key prefix, module)``.
        layout: ``timm`` or ``torchvision`` naming inside a block.
        family: Converter family, for messages.
        source: Source library, for messages.
        arch: Architecture name, for messages.

    Returns:
        Source key -> our key for every block key (keys of unknown parts are left out,
        so :func:`remap` reports them).

    Raises:
        WeightConversionError: A different number of blocks, or a block of another layout.

    """
    blocks: dict[tuple[int, int], dict[str, str]] = {}  # (stage, block) -> {rest: full key}
    for key in state_dict:
        m = re.fullmatch(block_pattern, key)
        if m:
            index = (int(m.group("s")), int(m.groupdict().get("b") or 0))
            blocks.setdefault(index, {})[m.group("rest")] = key
    if len(blocks) != len(targets):
        raise WeightConversionError(
            f"{family} converter: the {source} {arch!r} state dict has {len(blocks)} blocks, the "
            f"matching backbone has {len(targets)}.",
            hint="Check --arch: the checkpoint is probably another variant or size.",
        )
    keys_of: Callable[..., dict[str, str]] = _block_keys_timm if layout == "timm" else _block_keys_tv
    out: dict[str, str] = {}
    for (stage, block), (prefix, module) in zip(sorted(blocks), targets, strict=True):
        full = blocks[(stage, block)]
        for rest, ours in keys_of(list(full), prefix, module, f"{stage}.{block}").items():
            out[full[rest]] = ours
    return out


def _built_backbone(spec: Mapping[str, Any]) -> nn.Module:
    import torch

    from pretrain_builtins.backbones.efficientnet import EfficientNet
    from pretrain_builtins.backbones.efficientnet_v2 import EfficientNetV2

    cls = EfficientNet if spec["type"] == "EfficientNet" else EfficientNetV2
    with torch.device("meta"):
        return cls(**{k: v for k, v in spec.items() if k != "type"})


def convert(state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
    """Map a torchvision or timm EfficientNet(V2) state dict to ``backbone.*``/``head.fc.*`` keys.

    Args:
        state_dict: The source model's ``state_dict()``.
        source: ``torchvision`` or ``timm``.
        arch: ``efficientnet_b0`` ... / ``efficientnet_v2_s`` ... (torchvision),
            ``efficientnet_b0``/``tf_efficientnet_b0``/``tf_efficientnetv2_s`` ... (timm, with
            an optional pretrained tag).

    Returns:
        Our classifier's keys (``EfficientNet``/``EfficientNetV2`` backbone,
        ``LinearClsHead`` head); tensors shared, not copied.

    Raises:
        WeightConversionError: Unknown arch/source, keys this mapping does not cover, or
            a block structure that differs from the arch.

    """
    spec = backbone_spec(arch, source)
    family = "efficientnet" if spec["type"] == "EfficientNet" else "efficientnet_v2"
    backbone = _built_backbone(spec)
    layers = list(backbone.layers)  # type: ignore[arg-type]
    last = len(layers) - 1
    targets = [(f"backbone.layers.{i}.{j}", block) for i in range(1, last) for j, block in enumerate(layers[i])]
    if source == "torchvision":
        block_pattern = r"features\.(?P<s>\d+)\.(?P<b>\d+)\.(?P<rest>block\..+)"
        layout = "torchvision"
        tv_last = max((int(k.split(".")[1]) for k in state_dict if k.startswith("features.")), default=last)
        rules = [
            KeyRule(rf"features\.0\.0\.{_P}", r"backbone.layers.0.conv.\1"),
            KeyRule(rf"features\.0\.1\.{_P}", r"backbone.layers.0.bn.\1"),
            KeyRule(rf"features\.{tv_last}\.0\.{_P}", rf"backbone.layers.{last}.conv.\1"),
            KeyRule(rf"features\.{tv_last}\.1\.{_P}", rf"backbone.layers.{last}.bn.\1"),
            KeyRule(r"classifier\.1\.(weight|bias)", r"head.fc.\1"),
        ]
    else:
        block_pattern = TIMM_BLOCKS
        layout = "timm"
        rules = [
            KeyRule(rf"conv_stem\.{_P}", r"backbone.layers.0.conv.\1"),
            KeyRule(rf"bn1\.{_P}", r"backbone.layers.0.bn.\1"),
            KeyRule(rf"conv_head\.{_P}", rf"backbone.layers.{last}.conv.\1"),
            KeyRule(rf"bn2\.{_P}", rf"backbone.layers.{last}.bn.\1"),
            KeyRule(r"classifier\.(weight|bias)", r"head.fc.\1"),
        ]
    table = map_blocks(state_dict, block_pattern, targets, layout=layout, family=family, source=source, arch=arch)
    rules.insert(0, KeyRule(block_pattern, lambda m: table.get(m.group(0))))
    return remap(state_dict, rules, family=family, source=source, arch=arch)


class EfficientNetConverter(BaseWeightConverter):
    """torchvision ``efficientnet_b{0..7}``; timm ``efficientnet_*``/``tf_efficientnet_*`` (B0..B8, ES, EM, L2)."""

    architectures = {"torchvision": [_V1_TV.pattern], "timm": [_V1_TIMM.pattern]}

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert`."""
        return convert(state_dict, source=source, arch=arch)

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`backbone_spec`."""
        return backbone_spec(arch, source)


class EfficientNetV2Converter(BaseWeightConverter):
    """torchvision ``efficientnet_v2_{s,m,l}``; timm ``tf_efficientnetv2_{s,m,l,xl,b0..b3}``."""

    architectures = {"torchvision": [_V2_TV.pattern], "timm": [_V2_TIMM.pattern]}

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert`."""
        return convert(state_dict, source=source, arch=arch)

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`backbone_spec`."""
        return backbone_spec(arch, source)
