"""Convert torchvision/timm RegNetX state dicts to our RegNet classifier keys.

Our ``RegNet`` uses ResNet's names (``conv1``/``bn1`` stem, ``layer{s}.{j}.conv{1,2,3}``/
``bn{1,2,3}``/``downsample.{0,1}``) and ``head.fc``.

* torchvision ``regnet_x_*``: ``stem.{0,1}``, ``trunk_output.block{s}.block{s}-{j}.``
  ``{proj, f.a, f.b, f.c}.{0,1}``, ``fc``; its widths are our presets of the same name
  (``regnet_x_400mf`` ...), which differ from MMPretrain's ``regnetx_400mf``.
* timm ``regnetx_{004,008,016,032,040,064,080,120}`` (= MMPretrain's ``regnetx_400mf`` ...
  ``regnetx_12gf``): ``stem.{conv,bn}``, ``s{s}.b{j+1}.{conv1,conv2,conv3,downsample}.``
  ``{conv,bn}``, ``head.fc``.

Registered as the ``regnet`` entry point of ``pretrain.weight_converters``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pretrain.components import BaseWeightConverter
from pretrain_builtins.converters import KeyRule, remap, unsupported

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["RegNetConverter", "backbone_spec", "convert"]

_TV = re.compile(r"regnet_x_(400mf|800mf|1_6gf|3_2gf|8gf|16gf|32gf)")
#: timm name -> MMPretrain preset (same pycls widths).
_TIMM_ARCHS = {
    "004": "regnetx_400mf", "008": "regnetx_800mf", "016": "regnetx_1.6gf", "032": "regnetx_3.2gf",
    "040": "regnetx_4.0gf", "064": "regnetx_6.4gf", "080": "regnetx_8.0gf", "120": "regnetx_12gf",
}
_TIMM = re.compile(rf"regnetx_({'|'.join(_TIMM_ARCHS)})")
_SUPPORTED = {"torchvision": ["regnet_x_{400mf,800mf,1_6gf,3_2gf,8gf,16gf,32gf}"],
              "timm": [f"regnetx_{{{','.join(_TIMM_ARCHS)}}}"]}
_P = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_TV_UNIT = {"f.a": ("conv1", "bn1"), "f.b": ("conv2", "bn2"), "f.c": ("conv3", "bn3"),
            "proj": ("downsample.0", "downsample.1")}


def backbone_spec(arch: str, source: str) -> dict[str, Any]:
    """The backbone table whose keys the converted weights fill (for the CLI summary)."""
    name = arch.split(".", 1)[0]
    if source == "torchvision" and _TV.fullmatch(name):
        return {"type": "RegNet", "arch": name}
    if source == "timm" and (m := _TIMM.fullmatch(name)):
        return {"type": "RegNet", "arch": _TIMM_ARCHS[m.group(1)]}
    raise unsupported("regnet", source, arch, _SUPPORTED)


def _tv_block(m: re.Match[str]) -> str:
    stage, block, unit, part, param = m.groups()
    conv, bn = _TV_UNIT[unit]
    return f"backbone.layer{stage}.{block}.{conv if part == '0' else bn}.{param}"


def _timm_block(m: re.Match[str]) -> str:
    stage, block, unit, part, param = m.groups()
    j = int(block) - 1
    if unit == "downsample":
        return f"backbone.layer{stage}.{j}.downsample.{0 if part == 'conv' else 1}.{param}"
    return f"backbone.layer{stage}.{j}.{unit if part == 'conv' else 'bn' + unit[-1]}.{param}"


_TV_RULES = [
    KeyRule(rf"stem\.0\.{_P}", r"backbone.conv1.\1"),
    KeyRule(rf"stem\.1\.{_P}", r"backbone.bn1.\1"),
    KeyRule(rf"trunk_output\.block(\d)\.block\1-(\d+)\.(f\.[abc]|proj)\.([01])\.{_P}", _tv_block),
    KeyRule(r"fc\.(weight|bias)", r"head.fc.\1"),
]
_TIMM_RULES = [
    KeyRule(rf"stem\.conv\.{_P}", r"backbone.conv1.\1"),
    KeyRule(rf"stem\.bn\.{_P}", r"backbone.bn1.\1"),
    KeyRule(rf"s(\d)\.b(\d+)\.(conv[123]|downsample)\.(conv|bn)\.{_P}", _timm_block),
    KeyRule(r"head\.fc\.(weight|bias)", r"head.fc.\1"),
]


def convert(state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
    """Map a torchvision or timm RegNetX state dict to ``backbone.*``/``head.fc.*`` keys.

    Args:
        state_dict: The source model's ``state_dict()``.
        source: ``torchvision`` or ``timm``.
        arch: ``regnet_x_400mf`` ... (torchvision) or ``regnetx_004`` ... (timm, tags ignored).

    Returns:
        Our classifier's keys (``RegNet`` backbone, ``LinearClsHead`` head).

    Raises:
        WeightConversionError: Unknown arch/source or keys this mapping does not cover.

    """
    backbone_spec(arch, source)
    rules = _TV_RULES if source == "torchvision" else _TIMM_RULES
    return remap(state_dict, rules, family="regnet", source=source, arch=arch)


class RegNetConverter(BaseWeightConverter):
    """torchvision ``regnet_x_*``; timm ``regnetx_{004..120}`` (MMPretrain's ``regnetx_*`` presets)."""

    architectures = {"torchvision": [_TV.pattern], "timm": [_TIMM.pattern]}

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert`."""
        return convert(state_dict, source=source, arch=arch)

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`backbone_spec`."""
        return backbone_spec(arch, source)
