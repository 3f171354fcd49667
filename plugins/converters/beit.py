"""Convert BEiT's tokenizers (VQKD, DALL-E's encoder) to the keys of our ``VQKD`` / ``DALL-E``.

The result is the tokenizer's own state dict (no ``backbone.``/``head.`` prefix): load
it with ``init = [{type = "Pretrained", checkpoint = "vqkd.safetensors"}]`` in
``[model.target_generator]``.

* ``--from mmpretrain``: MMPretrain's ``vqkd_encoder.pth`` and ``dalle_encoder.pth``
  (``download.openmmlab.com/mmselfsup/1.x/target_generator_ckpt/``) already use our
  names; an optional ``target_generator.`` prefix is stripped.
* ``--from beit``: ``microsoft/unilm``'s BEiT v2 tokenizer checkpoints
  (``vqkd_encoder_base_decoder_*.pth``): ``encoder.blocks.{i}.{norm1, attn.{qkv, q_bias,
  v_bias, proj}, norm2, mlp.fc{1,2}}``, ``encoder.patch_embed.proj``, ``encoder.norm``,
  ``quantize.embedding.{weight, initted}``, ``quantize.cluster_size``,
  ``encode_task_layer``; the decoder (``decoder.*``, ``decode_task_layer.*``), the input
  scaling buffers and the codebook's training averages (``embedding.cluster_size``,
  ``embedding.embed_avg``) are dropped on purpose. DALL-E's encoder (``openai/DALL-E``'s
  ``encoder.pkl``, a pickled module: export its ``state_dict()`` first) has our names.

The converted keys are checked against the tokenizer built (on the meta device) with
the published configuration, so a truncated or mismatched file fails here.
Registered as the ``beit`` entry point of ``pretrain.weight_converters``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pretrain.components import BaseWeightConverter
from pretrain_builtins.converters import KeyRule, WeightConversionError, remap, unsupported

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["VQKD_BASE_ENCODER", "BEiTTokenizerConverter", "convert"]

_P = r"(weight|bias)"
_ARCHS = {"vqkd": "vqkd", "dalle": "dalle", "dall-e": "dalle", "dall_e": "dalle"}
_SUPPORTED = {"mmpretrain": ["vqkd", "dalle"], "beit": ["vqkd", "dalle"]}

#: MMPretrain's ``vqkd_encoder`` configuration (BEiT v2 base tokenizer).
VQKD_BASE_ENCODER: dict[str, Any] = {
    "arch": "base", "img_size": 224, "patch_size": 16, "out_type": "featmap", "final_norm": True,
    "use_abs_pos_emb": True, "use_rel_pos_bias": False, "use_shared_rel_pos_bias": False,
    "layer_scale_init_value": 0.0,
}

_OURS_VQKD = [
    KeyRule(r"(?:target_generator\.)?(encoder\..+)", r"\1"),
    KeyRule(r"(?:target_generator\.)?(quantize\.(?:embedding\.(?:weight|initted)|cluster_size))", r"\1"),
    KeyRule(rf"(?:target_generator\.)?(encode_task_layer\.[02]\.{_P})", r"\1"),
]
_OURS_DALLE = [KeyRule(r"(?:target_generator\.)?(blocks\..+\.[wb])", r"\1")]

_UNILM_VQKD = [
    KeyRule(r"encoder\.(cls_token|pos_embed)", r"encoder.\1"),
    KeyRule(rf"encoder\.patch_embed\.proj\.{_P}", r"encoder.patch_embed.projection.\1"),
    KeyRule(rf"encoder\.blocks\.(\d+)\.norm([12])\.{_P}", r"encoder.layers.\1.ln\2.\3"),
    KeyRule(r"encoder\.blocks\.(\d+)\.attn\.(qkv\.weight|q_bias|v_bias|proj\.weight|proj\.bias)",
            r"encoder.layers.\1.attn.\2"),
    KeyRule(rf"encoder\.blocks\.(\d+)\.mlp\.fc1\.{_P}", r"encoder.layers.\1.ffn.layers.0.0.\2"),
    KeyRule(rf"encoder\.blocks\.(\d+)\.mlp\.fc2\.{_P}", r"encoder.layers.\1.ffn.layers.1.\2"),
    KeyRule(rf"encoder\.norm\.{_P}", r"encoder.ln1.\1"),
    KeyRule(r"quantize\.(embedding\.(?:weight|initted)|cluster_size)", r"quantize.\1"),
    KeyRule(rf"encode_task_layer\.([02])\.{_P}", r"encode_task_layer.\1.\2"),
    # Not part of the tokenizer: the pixel decoder and training-time statistics.
    KeyRule(r"(decoder|decode_task_layer|scaling_layer)\..+", None),
    KeyRule(r"quantize\.embedding\.(cluster_size|embed_avg)", None),
]


def parse_arch(arch: str, source: str) -> str:
    """``vqkd`` or ``dalle``.

    Raises:
        WeightConversionError: Not a tokenizer this converter knows for ``source``.

    """
    name = _ARCHS.get(BaseWeightConverter.arch_key(arch))
    if source not in _SUPPORTED or name is None:
        raise unsupported("beit", source, arch, _SUPPORTED)
    return name


def _reference(name: str) -> nn.Module:
    import torch

    from pretrain_builtins.target_generators.dalle import DALLEEncoder
    from pretrain_builtins.target_generators.vqkd import VQKD

    with torch.device("meta"):
        return VQKD(encoder_config=VQKD_BASE_ENCODER) if name == "vqkd" else DALLEEncoder()


def _check(out: Mapping[str, Tensor], name: str, source: str, arch: str) -> None:
    own = {k: tuple(v.shape) for k, v in _reference(name).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in out.items()}
    missing, unexpected = sorted(own.keys() - got.keys()), sorted(got.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & got.keys() if own[k] != got[k])
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if keys]
        raise WeightConversionError(
            f"beit converter: the {source} {arch!r} checkpoint does not fit the published {name} tokenizer "
            f"({'; '.join(parts)}).",
            hint="Check --arch (vqkd or dalle) and that the file is the tokenizer's encoder checkpoint.",
        )


def convert(state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
    """Map a VQKD or DALL-E encoder checkpoint to our tokenizer's keys (checked against its layout).

    Raises:
        WeightConversionError: Unknown arch/source, keys this mapping does not cover, or a
            checkpoint that does not fit the published tokenizer.

    """
    name = parse_arch(arch, source)
    rules = _OURS_DALLE if name == "dalle" else _OURS_VQKD if source == "mmpretrain" else _UNILM_VQKD
    out = remap(state_dict, rules, family="beit", source=source, arch=arch)
    _check(out, name, source, arch)
    return out


class BEiTTokenizerConverter(BaseWeightConverter):
    """BEiT's tokenizers: VQKD (BEiT v2) and DALL-E's encoder (BEiT v1), from MMPretrain or BEiT's releases."""

    architectures = {"mmpretrain": [r"vqkd", r"dall[-_]?e"], "beit": [r"vqkd", r"dall[-_]?e"]}

    def convert(self, state_dict: Mapping[str, Tensor], *, source: str, arch: str) -> dict[str, Tensor]:
        """See :func:`convert`."""
        return convert(state_dict, source=source, arch=arch)
