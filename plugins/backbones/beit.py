"""BEiT backbones: a ViT with relative position bias and layer scale, and its pretraining variant.

Provenance: Bao et al., 2022, "BEiT: BERT Pre-Training of Image Transformers"
(arXiv:2106.08254) and Peng et al., 2022, "BEiT v2" (arXiv:2208.06366); MMPretrain's
``BEiTViT`` (``mmpretrain/models/backbones/beit.py``) and ``BEiTPretrainViT``
(``mmpretrain/models/selfsup/beit.py``). Both subclass our ``VisionTransformer`` (same
patch embedding, tokens, output formats, freezing and layer-wise LR depth) with BEiT's
blocks (``pretrain_builtins.layers.BEiTTransformerEncoderLayer``); keys equal
MMPretrain's, so its checkpoints load unchanged, and a pretraining checkpoint's shared
relative position bias is copied into every layer when loaded into a ``BEiTViT`` with
per-layer biases (MMPretrain's fine-tuning path). Differences (``docs/differences.md``):
``out_indices`` is never mutated (negatives allowed, in order), the masked forward
interpolates the absolute position embedding too, a grid other than the one the
relative position bias was built for is a clear error, tables of another size are
resized in torch (MMPretrain needs SciPy's removed ``interp2d``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from pretrain.errors import PretrainError
from pretrain_builtins.backbones.vision_transformer import ARCH_ZOO, InterpolateMode, OutType, VisionTransformer
from pretrain_builtins.layers import (
    BEiTTransformerEncoderLayer,
    RelativePositionBias,
    maybe_checkpoint,
    replace_masked,
    resize_pos_embed,
    resize_relative_position_bias_table,
)
from pretrain_builtins.layers.relative_position import CLS_EXTRA_ROWS, table_side

__all__ = ["BEiTPretrainViT", "BEiTViT"]

#: MMPretrain's BEiT ``arch_zoo`` adds EVA's giant ViT to the ViT presets.
BEIT_ARCH_ZOO = {**ARCH_ZOO, "eva-giant": {"embed_dims": 1408, "num_layers": 40, "num_heads": 16,
                                           "feedforward_channels": 6144}}
_BEIT_ALIASES = {"eva-g": "eva-giant"}

Bias = Literal["qv_bias"] | bool


class BEiTViT(VisionTransformer):
    """BEiT's ViT: q/v biases, layer scale, relative position bias (per layer or shared), for fine-tuning.

    Returns one feature per ``out_indices`` entry, shaped by ``out_type`` (see
    ``VisionTransformer``; ``avg_featmap``, the default, is the mean patch token through
    ``ln2``). With a relative position bias the input must make the ``img_size`` grid.

    Args:
        arch: A ViT preset (``base``/``b``, ``large``/``l``, ``deit-tiny``..., ``eva-giant``/``eva-g``)
            or a table with integer ``embed_dims``, ``num_layers``, ``num_heads``, ``feedforward_channels``.
        img_size: Input size (int or [H, W]); the relative position bias is built for its grid.
        patch_size: Square patch size in pixels.
        in_channels: Image channels.
        out_indices: Encoder layer(s) to output; negative values count from the end.
        drop_rate: Dropout after the position embedding, the projections and in the MLPs.
        drop_path_rate: Stochastic depth, rising linearly from 0 to this value over the layers.
        bias: Attention biases: ``qv_bias`` (learned q and v biases, no k bias), true or false.
        final_norm: Apply a LayerNorm (``ln1``) after the last layer.
        out_type: ``cls_token``, ``featmap``, ``avg_featmap`` or ``raw``.
        with_cls_token: Prepend a learnable cls token.
        frozen_stages: Freeze the patch embedding, tokens and the first this-many layers.
        use_abs_pos_emb: Add a learned absolute position embedding (as a plain ViT).
        use_rel_pos_bias: Give every layer its own relative position bias.
        use_shared_rel_pos_bias: One relative position bias shared by all layers
            (``rel_pos_bias``); exclusive with ``use_rel_pos_bias``.
        interpolate_mode: How the absolute position embedding is resized for other grids.
        layer_scale_init_value: Initial layer scale γ of both branches (0 disables it).
        with_cp: Activation checkpointing of every layer while training.

    """

    default_init: ClassVar[list[dict[str, Any]]] = []
    example_config: ClassVar[dict[str, Any]] = {
        "arch": {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32},
        "img_size": 16, "patch_size": 4,
    }

    def __init__(
        self,
        *,
        arch: str | dict[str, int] = "base",
        img_size: Annotated[int, Field(gt=0)] | tuple[int, int] = 224,
        patch_size: Annotated[int, Field(gt=0)] = 16,
        in_channels: Annotated[int, Field(gt=0)] = 3,
        out_indices: int | Sequence[int] = -1,
        drop_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        bias: Bias = "qv_bias",
        final_norm: bool = False,
        out_type: OutType = "avg_featmap",
        with_cls_token: bool = True,
        frozen_stages: Annotated[int, Field(ge=-1)] = -1,
        use_abs_pos_emb: bool = False,
        use_rel_pos_bias: bool = True,
        use_shared_rel_pos_bias: bool = False,
        interpolate_mode: InterpolateMode = "bicubic",
        layer_scale_init_value: Annotated[float, Field(ge=0.0)] = 0.1,
        with_cp: bool = False,
    ) -> None:
        problems = list(self._beit_check(use_rel_pos_bias, use_shared_rel_pos_bias))
        if problems:
            raise ValueError("; ".join(f"{name}: {msg}" for name, msg in problems))
        self.bias = bias
        self.use_rel_pos_bias = use_rel_pos_bias
        super().__init__(
            arch=_resolve(arch), img_size=img_size, patch_size=patch_size, in_channels=in_channels,
            out_indices=out_indices, drop_rate=drop_rate, drop_path_rate=drop_path_rate, final_norm=final_norm,
            out_type=out_type, with_cls_token=with_cls_token, frozen_stages=-1, interpolate_mode=interpolate_mode,
            layer_scale_init_value=layer_scale_init_value, with_cp=with_cp,
        )
        self.arch = arch if isinstance(arch, str) else dict(arch)
        if not use_abs_pos_emb:
            del self.pos_embed
            self.pos_embed = None  # type: ignore[assignment]
        self.use_abs_pos_emb = use_abs_pos_emb
        self.rel_pos_bias: RelativePositionBias | None = (
            RelativePositionBias(self.patch_resolution, self.arch_settings(arch)["num_heads"], with_cls_token)
            if use_shared_rel_pos_bias else None
        )
        self.register_load_state_dict_pre_hook(self._prepare_relative_position_bias_table)
        self.frozen_stages = frozen_stages
        if frozen_stages > 0:
            self._freeze_stages()

    def build_layer(
        self, settings: Mapping[str, int], *, drop_rate: float, drop_path_rate: float, qkv_bias: bool,
        layer_scale_init_value: float,
    ) -> nn.Module:
        """A BEiT block (its own relative position bias if ``use_rel_pos_bias``)."""
        return BEiTTransformerEncoderLayer(
            self.embed_dims, settings["num_heads"], settings["feedforward_channels"], layer_scale_init_value,
            window_size=self.patch_resolution, use_rel_pos_bias=self.use_rel_pos_bias, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate, bias=self.bias,
        )

    @staticmethod
    def arch_settings(arch: str | Mapping[str, int]) -> dict[str, int]:
        """Resolve ``arch`` (ViT presets plus ``eva-giant``) to its four sizes."""
        if isinstance(arch, str) and arch.lower() in ("eva-g", "eva-giant"):
            return dict(BEIT_ARCH_ZOO["eva-giant"])
        return VisionTransformer.arch_settings(arch)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """ViT checks (arch, out_indices, cls token, frozen_stages) plus the exclusive bias options."""
        arch = _resolve(params.get("arch", "base"))
        yield from super().spec_issues({**params, "arch": arch})
        yield from cls._beit_check(params.get("use_rel_pos_bias", True), params.get("use_shared_rel_pos_bias", False))

    @staticmethod
    def _beit_check(own: bool, shared: bool) -> Iterable[tuple[str, str]]:
        if own and shared:
            yield "use_shared_rel_pos_bias", "cannot be true together with use_rel_pos_bias; pick one"

    # ------------------------------------------------------------------ weights

    def post_init_weights(self) -> None:
        """MMPretrain's init: Xavier MLPs, truncated-normal bias tables and position embedding."""
        for layer in self.layers:
            assert isinstance(layer, BEiTTransformerEncoderLayer)
            layer.init_weights()
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _prepare_relative_position_bias_table(
        self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Load-time hook: a shared table -> every layer's; tables of another grid resized."""
        shared = prefix + "rel_pos_bias.relative_position_bias_table"
        if self.use_rel_pos_bias and shared in state_dict:
            table = state_dict.pop(shared)
            state_dict.pop(prefix + "rel_pos_bias.relative_position_index", None)
            for i in range(self.num_layers):
                state_dict[f"{prefix}layers.{i}.attn.relative_position_bias_table"] = table.clone()
        own = dict(self.named_parameters()) | dict(self.named_buffers())
        for key, current in own.items():
            name = prefix + key
            if not key.endswith("relative_position_bias_table") or name not in state_dict:
                continue
            table = state_dict[name]
            if table.shape != current.shape and table.dim() == 2 and table.shape[1] == current.shape[1]:
                src, dst = table_side(table.shape[0], CLS_EXTRA_ROWS), table_side(current.shape[0], CLS_EXTRA_ROWS)
                state_dict[name] = resize_relative_position_bias_table(table, (src, src), (dst, dst), CLS_EXTRA_ROWS)
            index = key.replace("bias_table", "index")
            if index in own:  # depends only on the grid: this model's own is the right one
                state_dict[prefix + index] = own[index].detach().clone()

    # ------------------------------------------------------------------ forward

    def shared_bias(self) -> Tensor | None:
        """The shared relative position bias (heads, N, N), or None."""
        return self.rel_pos_bias() if self.rel_pos_bias is not None else None

    def _check_grid(self, grid: tuple[int, int]) -> None:
        if (self.use_rel_pos_bias or self.rel_pos_bias is not None) and tuple(grid) != tuple(self.patch_resolution):
            raise PretrainError(
                f"{type(self).__name__} got a {grid[0]}x{grid[1]} patch grid, but its relative position bias "
                f"is built for {self.patch_resolution[0]}x{self.patch_resolution[1]}",
                hint="Feed images of the backbone's img_size (or set img_size to the data's size; a checkpoint's "
                "tables are resized when they are loaded).",
            )

    def encode(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, ...]:
        """Tokens (B, extra + L, C) with the cls token -> the raw tokens after each ``out_indices`` layer."""
        if self.pos_embed is not None:
            x = x + resize_pos_embed(self.pos_embed, self.patch_resolution, grid, self.interpolate_mode,
                                     self.num_extra_tokens)
        x = self.drop_after_pos(x)
        bias = self.shared_bias()
        found: dict[int, Tensor] = {}
        for i, layer in enumerate(self.layers):
            x = maybe_checkpoint(partial(layer, rel_pos_bias=bias), x, self.with_cp and self.training)
            if i == self.num_layers - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                found[i] = x
        return tuple(found[i] for i in self.out_indices)

    def _tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        tokens, grid = self.patch_embed(x)  # (B, L, C)
        self._check_grid(grid)
        return tokens, grid

    def _with_cls(self, tokens: Tensor) -> Tensor:
        if self.cls_token is None:
            return tokens
        return torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """(B, C_in, H, W) images -> one feature per ``out_indices`` entry."""
        tokens, grid = self._tokens(x)
        return tuple(self._format_output(t, grid) for t in self.encode(self._with_cls(tokens), grid))


class BEiTPretrainViT(BEiTViT):
    """BEiT's encoder for masked image modelling: masked patches become a learned mask token.

    ``forward(x, mask)`` with ``mask`` bool (B, H/p, W/p) (True = masked) returns the
    raw tokens (B, 1 + L, C) after each ``out_indices`` layer (BEiT v2 takes layer 9
    and the last); ``forward(x)`` (``mask = None``) is the ``BEiTViT`` forward.

    Args:
        arch: A ViT preset or a table with integer ``embed_dims``, ``num_layers``,
            ``num_heads``, ``feedforward_channels``.
        img_size: Input size (int or [H, W]); the relative position bias is built for its grid.
        patch_size: Square patch size in pixels.
        in_channels: Image channels.
        out_indices: Encoder layer(s) to output; negative values count from the end.
        drop_rate: Dropout after the position embedding, the projections and in the MLPs.
        drop_path_rate: Stochastic depth, rising linearly from 0 to this value over the layers.
        final_norm: Apply a LayerNorm after the last layer (BEiT v1: true, v2: false).
        out_type: Output format of the unmasked forward (``raw`` by default).
        frozen_stages: Freeze the patch embedding, tokens and the first this-many layers.
        use_abs_pos_emb: Add a learned absolute position embedding.
        use_rel_pos_bias: Give every layer its own relative position bias.
        use_shared_rel_pos_bias: One relative position bias shared by all layers (BEiT's default).
        layer_scale_init_value: Initial layer scale γ (0 disables it).
        interpolate_mode: How the absolute position embedding is resized for other grids.
        with_cp: Activation checkpointing of every layer while training.

    """

    def __init__(
        self,
        *,
        arch: str | dict[str, int] = "base",
        img_size: Annotated[int, Field(gt=0)] | tuple[int, int] = 224,
        patch_size: Annotated[int, Field(gt=0)] = 16,
        in_channels: Annotated[int, Field(gt=0)] = 3,
        out_indices: int | Sequence[int] = -1,
        drop_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        final_norm: bool = True,
        out_type: OutType = "raw",
        frozen_stages: Annotated[int, Field(ge=-1)] = -1,
        use_abs_pos_emb: bool = False,
        use_rel_pos_bias: bool = False,
        use_shared_rel_pos_bias: bool = True,
        layer_scale_init_value: Annotated[float, Field(ge=0.0)] = 0.1,
        interpolate_mode: InterpolateMode = "bicubic",
        with_cp: bool = False,
    ) -> None:
        super().__init__(
            arch=arch, img_size=img_size, patch_size=patch_size, in_channels=in_channels, out_indices=out_indices,
            drop_rate=drop_rate, drop_path_rate=drop_path_rate, final_norm=final_norm, out_type=out_type,
            with_cls_token=True, frozen_stages=frozen_stages, use_abs_pos_emb=use_abs_pos_emb,
            use_rel_pos_bias=use_rel_pos_bias, use_shared_rel_pos_bias=use_shared_rel_pos_bias,
            layer_scale_init_value=layer_scale_init_value, interpolate_mode=interpolate_mode, with_cp=with_cp,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """``BEiTViT``'s checks (BEiT's pretraining defaults: shared bias, no per-layer one)."""
        defaults = {"use_rel_pos_bias": False, "use_shared_rel_pos_bias": True, "with_cls_token": True}
        return super().spec_issues({**defaults, **params})

    def post_init_weights(self) -> None:
        """BEiT's init: ``BEiTViT``'s, truncated-normal tokens, rescaled output projections.

        Layer ``i``'s attention and MLP output weights are divided by sqrt(2·i)
        (MMPretrain's ``rescale_init_weight``).
        """
        super().post_init_weights()
        assert self.cls_token is not None
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        with torch.no_grad():
            for i, layer in enumerate(self.layers, start=1):
                layer.attn.proj.weight.div_((2.0 * i) ** 0.5)
                layer.ffn.layers[1].weight.div_((2.0 * i) ** 0.5)

    def example_inputs(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Conformance-kit input: images and a random half-masked patch grid (so the mask token trains)."""
        h, w = self.img_size
        return torch.randn(batch_size, self.in_channels, h, w), torch.rand(batch_size, *self.patch_resolution) < 0.5

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, ...]:  # type: ignore[override]
        """Raw tokens per ``out_indices`` with masked patches replaced, or the ``BEiTViT`` output."""
        if mask is None:
            return super().forward(x)
        tokens, grid = self._tokens(x)
        tokens = replace_masked(tokens, mask, self.mask_token)
        return self.encode(self._with_cls(tokens), grid)


def _resolve(arch: str | Mapping[str, int]) -> str | dict[str, int]:
    """BEiT-only presets as the table ``VisionTransformer`` understands."""
    if isinstance(arch, str) and arch.lower() in ("eva-g", "eva-giant"):
        return dict(BEIT_ARCH_ZOO["eva-giant"])
    return arch if isinstance(arch, str) else dict(arch)
