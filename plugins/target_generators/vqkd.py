"""VQKD, BEiT v2's tokenizer: a BEiT ViT encoder and a normalised nearest-codeword quantizer.

Provenance: Peng et al., 2022, "BEiT v2" (arXiv:2208.06366), ``microsoft/unilm``
``beit2/modeling_vqkd.py`` and ``norm_ema_quantizer.py``; MMPretrain's ``VQKD``
(``mmpretrain/models/selfsup/beit.py``) and ``NormEMAVectorQuantizer``
(``mmpretrain/models/utils/vector_quantizer.py``). Keys equal MMPretrain's
(``encoder.*``, ``encode_task_layer.{0,2}``, ``quantize.embedding.{weight,initted}``,
``quantize.cluster_size``), so ``vqkd_encoder.pth`` converts by name. Frozen (see
``_frozen.py``): the codebook's EMA and usage statistics are not updated (MMPretrain
updates ``cluster_size`` even in eval mode, a side effect of reading targets), and a
codebook that asks for k-means initialisation gets it from the first batch once, agreed
across processes (MMPretrain lets every rank pick its own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pretrain_builtins.backbones.beit import BEiTViT
from pretrain_builtins.target_generators._frozen import FrozenTokenizer

__all__ = ["VQKD", "EmbeddingEMA", "NormEMAVectorQuantizer", "kmeans"]

#: MMPretrain config keys of ``encoder_config`` that only restate our fixed choices.
_IGNORED_ENCODER_KEYS = {"norm_cfg": {"type": "LN", "eps": 1e-6}, "patch_cfg": {}, "layer_cfgs": {}, "init_cfg": None}


def kmeans(samples: Tensor, num_clusters: int, num_iters: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Spherical k-means (cosine similarity) of (N, D) unit vectors; returns (K, D) centroids."""
    n = samples.shape[0]
    idx = (torch.randperm(n, generator=generator, device="cpu")[:num_clusters] if n >= num_clusters
           else torch.randint(0, n, (num_clusters,), generator=generator, device="cpu"))
    means = samples[idx.to(samples.device)]
    for _ in range(num_iters):
        buckets = (samples @ means.t()).argmax(dim=-1)  # (N,)
        bins = torch.bincount(buckets, minlength=num_clusters)
        sums = torch.zeros_like(means).index_add_(0, buckets, samples)
        new = F.normalize(sums / bins.clamp(min=1)[:, None], dim=-1)
        means = torch.where((bins == 0)[:, None], means, new)
    return means


class EmbeddingEMA(nn.Module):
    """The codebook: ``weight`` (num_tokens, dim), unit rows, no gradient; ``initted`` flag.

    Args:
        num_tokens: Codewords.
        codebook_dim: Width of a codeword.
        kmeans_init: Start empty and take k-means centroids of the first batch.

    """

    initted: Tensor

    def __init__(self, num_tokens: int, codebook_dim: int, kmeans_init: bool = True) -> None:
        super().__init__()
        self.num_tokens, self.codebook_dim = num_tokens, codebook_dim
        weight = torch.zeros(num_tokens, codebook_dim) if kmeans_init else F.normalize(
            torch.randn(num_tokens, codebook_dim), dim=-1)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("initted", torch.tensor([float(not kmeans_init)]))

    def init_embed_(self, data: Tensor) -> None:
        """K-means initialisation from ``data`` (N, dim), once; rank 0's codebook wins in DDP."""
        if bool(self.initted.item()):
            return
        self.weight.data.copy_(kmeans(data.float(), self.num_tokens).to(self.weight.dtype))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.weight.data, src=0)
        self.initted.fill_(1.0)


class NormEMAVectorQuantizer(nn.Module):
    """Nearest codeword of the L2-normalised features (the codebook's EMA is not trained here).

    Args:
        num_embed: Codewords.
        embed_dims: Width of a codeword.
        beta: Commitment weight (kept for checkpoints and configs; no loss is computed frozen).
        decay: EMA decay of the codebook during tokenizer training (recorded, unused frozen).
        kmeans_init: Initialise the codebook by k-means of the first batch.

    """

    cluster_size: Tensor

    def __init__(self, num_embed: int, embed_dims: int, beta: float = 1.0, decay: float = 0.99,
                 kmeans_init: bool = True) -> None:
        super().__init__()
        self.num_tokens, self.codebook_dim, self.beta, self.decay = num_embed, embed_dims, beta, decay
        self.embedding = EmbeddingEMA(num_embed, embed_dims, kmeans_init)
        self.register_buffer("cluster_size", torch.zeros(num_embed))

    def forward(self, z: Tensor) -> Tensor:
        """(B, L, dim) features -> codeword ids (B, L) (nearest by Euclidean distance of unit vectors)."""
        flat = F.normalize(z, p=2, dim=-1).reshape(-1, self.codebook_dim)  # (B·L, dim)
        self.embedding.init_embed_(flat)
        codebook = self.embedding.weight.to(flat.dtype)
        dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        return dist.argmin(dim=1).view(z.shape[:-1])


class VQKD(FrozenTokenizer):
    """VQKD (BEiT v2's tokenizer): ``BEiTViT`` encoder, tanh MLP, normalised codebook -> token ids (B, L).

    BEiT v2 feeds it the second picture (the same crop, 224 px) normalised with the
    model's ``second_mean``/``second_std`` (127.5). Frozen; needs the converted
    ``vqkd_encoder.pth`` unless ``allow_random_init``.

    Args:
        encoder_config: The encoder's ``BEiTViT`` fields (MMPretrain's config: ``arch``,
            ``img_size``, ``patch_size``, ``out_type = "featmap"``, ``use_abs_pos_emb = true``,
            ``use_rel_pos_bias = false``, ``layer_scale_init_value = 0``, ...).
        decoder_config: The decoder's ``BEiTViT`` fields; the decoder is not used to make
            tokens (MMPretrain builds only the encoder) and is rejected.
        num_embed: Codewords (the vocabulary of BEiT v2's head).
        embed_dims: Width of a codeword.
        decay: EMA decay of the codebook (tokenizer training only).
        beta: Commitment weight (tokenizer training only).
        quantize_kmeans_init: A codebook without weights takes k-means centroids of the first batch.
        allow_random_init: Produce targets from random weights (only for smoke tests: a random
            tokenizer's targets teach the encoder almost nothing).

    """

    type_name = "VQKD"
    convert_arch = "vqkd"
    default_init: ClassVar[list[dict[str, Any]]] = []
    example_config: ClassVar[dict[str, Any]] = {
        "encoder_config": {"arch": {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32},
                           "img_size": 16, "patch_size": 4, "out_type": "featmap", "use_abs_pos_emb": True,
                           "use_rel_pos_bias": False, "layer_scale_init_value": 0.0, "final_norm": True},
        "num_embed": 32, "embed_dims": 8, "quantize_kmeans_init": False, "allow_random_init": True,
    }

    def __init__(
        self,
        *,
        encoder_config: dict[str, Any],
        decoder_config: dict[str, Any] | None = None,
        num_embed: Annotated[int, Field(gt=0)] = 8192,
        embed_dims: Annotated[int, Field(gt=0)] = 32,
        decay: Annotated[float, Field(ge=0, le=1)] = 0.99,
        beta: Annotated[float, Field(ge=0)] = 1.0,
        quantize_kmeans_init: bool = True,
        allow_random_init: bool = False,
    ) -> None:
        super().__init__(allow_random_init=allow_random_init)
        problems = list(self.spec_issues({"encoder_config": encoder_config, "decoder_config": decoder_config}))
        if problems:
            raise ValueError("; ".join(f"{name}: {msg}" for name, msg in problems))
        self.encoder = BEiTViT(**_encoder_fields(encoder_config))
        width = self.encoder.embed_dims
        self.quantize = NormEMAVectorQuantizer(num_embed, embed_dims, beta, decay, quantize_kmeans_init)
        self.encode_task_layer = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, embed_dims))
        self.num_embed = num_embed
        self.freeze()

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """``encoder_config`` must be valid ``BEiTViT`` fields with a ``featmap`` output; no decoder."""
        config = dict(params.get("encoder_config") or {})
        for key, default in _IGNORED_ENCODER_KEYS.items():
            if key in config and config[key] != default:
                yield "encoder_config", f"{key} = {config[key]!r} is not supported (only {default!r})"
        fields = _encoder_fields(config)
        import inspect

        accepted = set(inspect.signature(BEiTViT.__init__).parameters) - {"self"}
        unknown = sorted(set(fields) - accepted)
        if unknown:
            yield "encoder_config", f"unknown BEiTViT field(s) {', '.join(unknown)}"
            return
        for name, msg in BEiTViT.spec_issues(fields):
            yield f"encoder_config.{name}", msg
        if fields.get("out_type", "avg_featmap") != "featmap":
            yield "encoder_config.out_type", 'must be "featmap": the quantizer codes every patch'
        if params.get("decoder_config") is not None:
            yield "decoder_config", "the decoder is not needed to make tokens; remove it (its weights are dropped)"

    def example_inputs(self, batch_size: int) -> tuple[Tensor]:
        """Conformance-kit input: images of the encoder's size."""
        return (torch.randn(batch_size, self.encoder.in_channels, *self.encoder.img_size),)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> codeword ids (B, L) of the patches, row-major."""
        self.check_weights()
        feats = self.encoder(x)[-1]  # (B, C, h, w)
        tokens = feats.flatten(2).transpose(1, 2)  # (B, L, C)
        with torch.autocast(x.device.type, enabled=False):  # the codebook is compared in float32
            z = self.encode_task_layer(tokens.float())
        return self.quantize(z)


def _encoder_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in config.items() if k not in _IGNORED_ENCODER_KEYS}
    if isinstance(fields.get("out_indices"), list):
        fields["out_indices"] = tuple(fields["out_indices"])
    return fields
