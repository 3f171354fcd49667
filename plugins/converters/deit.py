"""Convert timm DeiT (distilled) and DeiT III state dicts to our classifier keys.

* timm ``deit_{tiny,small,base}_distilled_patch16_{224,384}`` → ``DistilledVisionTransformer``
  + ``DeiTClsHead``: ViT keys as in the ``vit`` converter, plus ``dist_token`` and
  ``head_dist`` (→ ``head.layers.head_dist``).
* timm ``deit3_{small,medium,base,large,huge}_patch{14,16}_{224,384}[_in21ft1k]`` → ``DeiT3``
  + ``VisionTransformerClsHead``: ViT keys with layer scales (``ls1.gamma``/``ls2.gamma``)
  and a position embedding without the cls slot.

torchvision publishes neither. Registered as the ``deit`` entry point of
``pretrain.weight_converters``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pretrain.components import BaseWeightConverter
from pretrain_builtins.converters import KeyRule, remap, unsupported
from pretrain_builtins.converters.vit import TIMM_RULES

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["DeiTConverter", "backbone_spec", "convert"]

_DISTILLED = re.compile(r"deit_(tiny|small|base)_distilled_patch16_(224|384)")
_DEIT3 = re.compile(r"deit3_(small|medium|base|large|huge)_patch(14|16)_(224|384)(?:_in21ft1k)?")
_SUPPORTED = {"timm": ["deit_{tiny,small,base}_distilled_patch16_{224,384}",
                       "deit3_{small,medium,base,large,huge}_patch{14,16}_{224,384}[_in21ft1k]"]}

_RULES = [
    KeyRule(r"dist_token", "backbone.dist_token"),
    KeyRule(r"head_dist\.(weight|bias)", r"head.layers.head_dist.\1"),
    *TIMM_RULES,
]


def backbone_spec(arch: str, source: str) -> dict[str, Any]:
    """The backbone table whose keys the converted weights fill (for the CLI summary)."""
    name = arch.split(".", 1)[0]
    if source == "timm" and (m := _DISTILLED.fullmatch(name)):
        return {"type": "DistilledVisionTransformer", "arch": f"deit-{m.group(1)}", "img_size": int(m.group(2))}
    if source == "timm" and (m := _DEIT3.fullmatch(name)):
        return {"type": "DeiT3", "arch": m.group(1), "patch_size": int(m.group(2)), "img_size": int(m.group(3))}
    raise unsupported("deit", source, arch, _SUPPORTED)


def convert(state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
    """Map a timm distilled DeiT or DeiT III state dict to ``backbone.*``/``head.layers.*`` keys.

    Args:
        state_dict: The source model's ``state_dict()``.
        source: ``timm``.
        arch: ``deit_tiny_distilled_patch16_224`` ..., ``deit3_small_patch16_224`` ...
            (pretrained tags ignored).

    Returns:
        Our classifier's keys (tensors shared, not copied).

    Raises:
        WeightConversionError: Unknown arch/source or keys this mapping does not cover.

    """
    backbone_spec(arch, source)
    return remap(state_dict, _RULES, family="deit", source=source, arch=arch)


class DeiTConverter(BaseWeightConverter):
    """timm ``deit_*_distilled_*`` (DistilledVisionTransformer) and ``deit3_*`` (DeiT3)."""

    architectures = {"timm": [_DISTILLED.pattern, _DEIT3.pattern]}

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert`."""
        return convert(state_dict, source=source, arch=arch)

    def backbone_spec(self, source: str, arch: str) -> dict[str, Any] | None:
        """See :func:`backbone_spec`."""
        return backbone_spec(arch, source)
