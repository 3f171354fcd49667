"""BEiT v2's neck: two extra BEiT layers over (last-layer cls token + early patch tokens).

Provenance: Peng et al., 2022, "BEiT v2" (arXiv:2208.06366), the "patch aggregation"
pretext; MMPretrain's ``BEiTV2Neck`` (``mmpretrain/models/necks/beitv2_neck.py``), same
keys (``patch_aggregation.{i}``, ``norm``). Differences (``docs/differences.md``): the
layers' output projections are rescaled after the init rules run, as in BEiT v2's code
(MMPretrain rescales in ``__init__`` and its TruncNormal init then overwrites it); a
custom ``backbone_arch`` table uses ViT's keys (MMPretrain reads a ``depth`` key it never
asks for).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseNeck
from pretrain_builtins.backbones.vision_transformer import VisionTransformer
from pretrain_builtins.layers import LN_EPS, BEiTTransformerEncoderLayer

__all__ = ["BEiTV2Neck"]


class BEiTV2Neck(BaseNeck):
    """Patch aggregation: ``num_layers`` BEiT layers on [last cls token, early patch tokens].

    ``forward((early, last), rel_pos_bias=None)`` takes the backbone's raw tokens after
    layer ``early_layers`` and after the last layer (B, 1 + L, C) and returns
    ``(x, x_cls_pt)``: the last layer's patch tokens and the aggregated ones, both
    through the shared ``norm`` (B, L, C), cls token dropped.

    Args:
        num_layers: Aggregation layers.
        early_layers: Backbone layer the early patch tokens come from (its stochastic
            depth continues from there).
        backbone_arch: The backbone's ViT preset or a table with integer ``embed_dims``,
            ``num_layers``, ``num_heads``, ``feedforward_channels``.
        drop_rate: Dropout after the projections and in the MLPs.
        drop_path_rate: Stochastic depth at the backbone's last layer (rising linearly).
        layer_scale_init_value: Initial layer scale γ.
        use_rel_pos_bias: Give each layer its own relative position bias (BEiT v2: no; it
            uses the backbone's shared bias, passed to ``forward``).

    """

    default_init: ClassVar[list[dict[str, Any]]] = [
        {"type": "TruncNormal", "layer": "Linear", "std": 0.02, "bias": 0.0},
    ]
    example_config: ClassVar[dict[str, Any]] = {
        "num_layers": 1, "early_layers": 1,
        "backbone_arch": {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32},
    }

    def __init__(
        self,
        *,
        num_layers: Annotated[int, Field(gt=0)] = 2,
        early_layers: Annotated[int, Field(ge=0)] = 9,
        backbone_arch: str | dict[str, int] = "base",
        drop_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        layer_scale_init_value: Annotated[float, Field(ge=0.0)] = 0.1,
        use_rel_pos_bias: bool = False,
    ) -> None:
        super().__init__()
        settings = VisionTransformer.arch_settings(backbone_arch)
        self.early_layers, self.embed_dims = early_layers, settings["embed_dims"]
        depth = max(settings["num_layers"], early_layers + num_layers)
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.patch_aggregation = nn.ModuleList(
            BEiTTransformerEncoderLayer(
                self.embed_dims, settings["num_heads"], settings["feedforward_channels"], layer_scale_init_value,
                window_size=None, use_rel_pos_bias=use_rel_pos_bias, drop_rate=drop_rate, drop_path_rate=dpr[i],
            )
            for i in range(early_layers, early_layers + num_layers)
        )
        self.norm = nn.LayerNorm(self.embed_dims, eps=LN_EPS)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """``backbone_arch`` must be a ViT preset or table."""
        arch = params.get("backbone_arch", "base")
        yield from ((f"backbone_{k}" if k == "arch" else k, m) for k, m in VisionTransformer.spec_issues(
            {"arch": arch, "out_indices": -1}) if k == "arch")

    def post_init_weights(self) -> None:
        """After the rules: Xavier MLPs, then BEiT v2's rescale of the output projections by sqrt(2·depth)."""
        with torch.no_grad():
            for i, layer in enumerate(self.patch_aggregation):
                assert isinstance(layer, BEiTTransformerEncoderLayer)
                layer.init_weights()
                depth = self.early_layers + i + 1
                layer.attn.proj.weight.div_((2.0 * depth) ** 0.5)
                layer.ffn.layers[1].weight.div_((2.0 * depth) ** 0.5)

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        """Conformance-kit input: early and last raw tokens (B, 1 + 4, C)."""
        c = self.embed_dims
        return ((torch.randn(batch_size, 5, c), torch.randn(batch_size, 5, c)),)

    def forward(self, inputs: tuple[Tensor, ...], rel_pos_bias: Tensor | None = None) -> tuple[Tensor, ...]:
        """``(x, x_cls_pt)``, both (B, L, C), from the backbone's ``(early, last)`` raw tokens."""
        early, last = inputs[0], inputs[-1]
        x_cls_pt = torch.cat([last[:, :1], early[:, 1:]], dim=1)  # (B, 1 + L, C)
        for layer in self.patch_aggregation:
            x_cls_pt = layer(x_cls_pt, rel_pos_bias=rel_pos_bias)
        return self.norm(last)[:, 1:], self.norm(x_cls_pt)[:, 1:]
