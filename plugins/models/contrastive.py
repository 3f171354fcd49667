"""Contrastive self-supervision: SimCLR, MoCo (v2) and MoCo v3.

Provenance (losses exactly as MMPretrain 1.x, ``mmpretrain/models/selfsup/``):

* ``SimCLR`` (Chen et al., 2020, arXiv:2002.05709; ``simclr.py``): the two views of
  each sample are interleaved into one batch (rows 2i, 2i+1), projected and
  L2-normalised; every row's positive is its partner, its negatives every other row
  of the *global* batch (2N - 2); ``head`` is a ``ContrastiveHead``.
* ``MoCo`` (v2, Chen et al., 2020, arXiv:2003.04297; ``moco.py``): queries from the
  online encoder, keys from a momentum encoder (``momentum`` is MMEngine's update rate,
  0.001 = decay 0.999) with shuffle-BN across processes; negatives from a queue of
  ``queue_len`` keys, enqueued after gathering from every rank.
* ``MoCoV3`` (Chen et al., 2021, arXiv:2104.02057; ``mocov3.py``): symmetric in-batch
  InfoNCE ``head.loss(q1, k2) + head.loss(q2, k1)`` against a momentum encoder whose
  rate follows a cosine from ``base_momentum`` to 0.

Differences (``docs/differences.md``): the global-batch collectives are
:mod:`pretrain.distributed`'s, so gradients under DDP equal one process on the same
global batch (MMPretrain's SimCLR ``GatherLayer`` halves them at 2 processes); each
SimCLR rank computes the loss of its own rows only (the same mean, W times less
work); the momentum encoder updates after each optimizer step with the engine's step
count (no global message hub); the queue is saved in checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pretrain.components import BackboneRef, HeadRef, NeckRef
from pretrain.distributed import all_gather, broadcast, rank_offset, world_size
from pretrain.selfsup import IMAGENET_MEAN, IMAGENET_STD
from pretrain_builtins.layers.momentum import MomentumTeacher
from pretrain_builtins.layers.queue import MemoryQueue
from pretrain_builtins.models.multiview_base import MultiViewSelfSupervisor, check_width

__all__ = ["MoCo", "MoCoV3", "SimCLR"]

_TINY_RESNET: dict[str, Any] = {"type": "ResNet_CIFAR", "depth": 18, "stem_channels": 4, "base_channels": 4}
_TINY_VIT: dict[str, Any] = {
    "type": "MoCoV3ViT", "img_size": 16, "patch_size": 8, "stop_grad_conv1": True,
    "arch": {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32},
}


def _width(module: Any, attr: str) -> int | None:
    value = getattr(module, attr, None)
    return value if isinstance(value, int) else None


class SimCLR(MultiViewSelfSupervisor):
    """SimCLR: InfoNCE between the two views of each image against the rest of the global batch.

    ``loss([view1, view2])`` returns ``{"loss": ...}``; labels are ignored.

    Args:
        backbone: The encoder being pretrained.
        neck: The projector (``NonLinearNeck``).
        head: A ``ContrastiveHead`` (the temperature lives there).
        mean: Per-channel mean of the 0..255 input (one value per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).

    """

    example_config: ClassVar[dict[str, Any]] = {
        "backbone": _TINY_RESNET,
        "neck": {"type": "NonLinearNeck", "in_channels": 32, "hid_channels": 16, "out_channels": 8},
        "head": {"type": "ContrastiveHead", "temperature": 0.1},
    }

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        neck: NeckRef,
        head: HeadRef,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = False,
    ) -> None:
        super().__init__(backbone=backbone, neck=neck, head=head, mean=mean, std=std, to_rgb=to_rgb)

    def loss(self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """InfoNCE of this process's rows against the global batch (labels are ignored)."""
        v1, v2 = self.input_views(inputs)
        x = torch.stack([v1, v2], dim=1).flatten(0, 1)  # (2n, C, H, W): rows 2i, 2i+1 = sample i
        z = self.project(x)  # (2n, d)
        z = z / (z.norm(p=2, dim=1, keepdim=True) + 1e-10)  # MMPretrain's normalisation
        keys = all_gather(z)  # (2N, d), this rank's rows at `offset`
        sim = z @ keys.T  # (2n, 2N)
        rows = torch.arange(z.shape[0], device=z.device)
        own = rows + rank_offset(z.shape[0], z.device)  # global index of each row
        partner = own ^ 1  # the other view of the same sample
        pos = sim.gather(1, partner[:, None])  # (2n, 1)
        keep = torch.ones_like(sim, dtype=torch.bool)
        keep[rows, own] = False
        keep[rows, partner] = False
        neg = sim[keep].view(sim.shape[0], -1)  # (2n, 2N - 2), columns in order
        assert self.head is not None
        losses: dict[str, Tensor] = self.head.loss(pos, neg)
        return losses


@torch.no_grad()
def _batch_shuffle(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Shuffle the global batch across processes (shuffle-BN); identity in one process.

    Returns this rank's share of the shuffled global batch and the permutation.
    """
    if world_size() == 1:
        return x, None  # a permutation within one batch leaves batch statistics unchanged
    gathered = all_gather(x)  # (N, ...)
    perm = broadcast(torch.randperm(gathered.shape[0], device=x.device))
    start = rank_offset(x.shape[0], x.device)
    return gathered[perm[start : start + x.shape[0]]], perm


@torch.no_grad()
def _batch_unshuffle(x: Tensor, perm: Tensor | None) -> Tensor:
    """Undo :func:`_batch_shuffle` for outputs ``x`` of the shuffled share."""
    if perm is None:
        return x
    gathered = all_gather(x)
    start = rank_offset(x.shape[0], x.device)
    return gathered[torch.argsort(perm)[start : start + x.shape[0]]]


class MoCo(MultiViewSelfSupervisor):
    """MoCo v2: queries against a momentum encoder's key (positive) and a queue of past keys.

    ``loss([view_q, view_k])`` returns ``{"loss": ...}`` and, while training, enqueues
    the keys of every process. ``momentum_encoder`` (a copy of backbone + neck) and
    ``queue`` are part of the state dict.

    Args:
        backbone: The encoder being pretrained.
        neck: The projector (``MoCoV2Neck``); its output width is ``feat_dim``.
        head: A ``ContrastiveHead`` (MoCo v2: temperature 0.2).
        queue_len: Keys kept as negatives; a multiple of the global batch size.
        feat_dim: Width of the keys in the queue (the neck's ``out_channels``).
        momentum: Update rate of the momentum encoder, ``key = (1 - m) * key + m * query``
            (MMEngine's convention: 0.001 is the paper's momentum 0.999).
        mean: Per-channel mean of the 0..255 input (one value per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).

    """

    teacher_attr: ClassVar[str | None] = "momentum_encoder"
    example_config: ClassVar[dict[str, Any]] = {
        "backbone": _TINY_RESNET,
        "neck": {"type": "MoCoV2Neck", "in_channels": 32, "hid_channels": 16, "out_channels": 8},
        "head": {"type": "ContrastiveHead", "temperature": 0.2},
        "queue_len": 16,
        "feat_dim": 8,
    }

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        neck: NeckRef,
        head: HeadRef,
        queue_len: Annotated[int, Field(gt=0)] = 65536,
        feat_dim: Annotated[int, Field(gt=0)] = 128,
        momentum: Annotated[float, Field(ge=0, le=1)] = 0.001,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = False,
    ) -> None:
        super().__init__(backbone=backbone, neck=neck, head=head, mean=mean, std=std, to_rgb=to_rgb)
        check_width("model.feat_dim", feat_dim, "the width model.neck outputs (out_channels)",
                    _width(self.neck, "out_channels"), "Set model.feat_dim to the neck's out_channels.")
        self.queue_len = queue_len
        self.feat_dim = feat_dim
        self.momentum = momentum
        self.momentum_encoder = MomentumTeacher(self.online(), momentum)
        self.queue = MemoryQueue(feat_dim, queue_len)

    @classmethod
    def data_issues(
        cls, params: Mapping[str, Any], *, split: str, views: int, batch_size: int, world_size: int = 1
    ) -> Iterable[tuple[str, str]]:
        """Two views, and (training) a global batch that divides ``queue_len``."""
        yield from super().data_issues(params, split=split, views=views, batch_size=batch_size,
                                       world_size=world_size)
        if split == "train":
            queue_len = int(params.get("queue_len", 65536))
            for msg in MemoryQueue.batch_issues(queue_len, batch_size * world_size):
                yield "model.queue_len", msg

    def loss(self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """InfoNCE of each query against its key and the queue (labels are ignored)."""
        im_q, im_k = self.input_views(inputs)
        q = F.normalize(self.project(im_q), dim=1)  # (n, d)
        with torch.no_grad():
            shuffled, perm = _batch_shuffle(im_k)
            k = F.normalize(self.teacher_project(shuffled), dim=1)
            k = _batch_unshuffle(k, perm)  # (n, d)
        l_pos = (q * k).sum(dim=1, keepdim=True)  # (n, 1)
        l_neg = q @ self.queue.negatives()  # (n, queue_len)
        assert self.head is not None
        losses: dict[str, Tensor] = self.head.loss(l_pos, l_neg)
        if self.training:  # validation must not change the training state
            self.queue.enqueue(k)
        return losses


class MoCoV3(MultiViewSelfSupervisor):
    """MoCo v3: each view's prediction must pick the other view's momentum key in the global batch.

    ``loss([view1, view2])`` returns ``{"loss": head.loss(q1, k2) + head.loss(q2, k1)}``.

    Args:
        backbone: The encoder being pretrained (``MoCoV3ViT`` or a ResNet).
        neck: The projector (``NonLinearNeck``, 3 layers).
        head: A ``MoCoV3Head`` holding the predictor and the temperature.
        base_momentum: Update rate of the momentum encoder at step 0; it follows a cosine
            to 0 at the last step (MMEngine's convention: 0.01 is the paper's 0.99 -> 1).
        mean: Per-channel mean of the 0..255 input (one value per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).

    """

    teacher_attr: ClassVar[str | None] = "momentum_encoder"
    example_config: ClassVar[dict[str, Any]] = {
        "backbone": _TINY_VIT,
        "neck": {"type": "NonLinearNeck", "in_channels": 16, "hid_channels": 16, "out_channels": 8,
                 "num_layers": 3, "with_avg_pool": False, "with_last_bn_affine": False},
        "head": {
            "type": "MoCoV3Head", "temperature": 0.2, "loss": {"type": "CrossEntropyLoss", "loss_weight": 0.4},
            "predictor": {"type": "NonLinearNeck", "in_channels": 8, "hid_channels": 16, "out_channels": 8,
                          "with_avg_pool": False, "with_last_bn_affine": False},
        },
    }

    def __init__(
        self,
        *,
        backbone: BackboneRef,
        neck: NeckRef,
        head: HeadRef,
        base_momentum: Annotated[float, Field(ge=0, le=1)] = 0.01,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = False,
    ) -> None:
        super().__init__(backbone=backbone, neck=neck, head=head, mean=mean, std=std, to_rgb=to_rgb)
        projection = _width(self.neck, "out_channels")
        predictor = getattr(self.head, "predictor", None)
        check_width("model.head.predictor.in_channels", _width(predictor, "in_channels"),
                    "the width model.neck outputs (out_channels)", projection,
                    "The predictor takes the projections: make its in_channels the neck's out_channels.")
        check_width("model.head.predictor.out_channels", _width(predictor, "out_channels"),
                    "the width of the momentum keys (model.neck.out_channels)", projection,
                    "Predictions are compared with keys: make the predictor's out_channels the neck's.")
        self.base_momentum = base_momentum
        self.momentum_encoder = MomentumTeacher(self.online(), base_momentum, cosine=True)

    def loss(self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """Symmetric InfoNCE of predictions against the other view's momentum keys."""
        v1, v2 = self.input_views(inputs)
        q1, q2 = self.project(v1), self.project(v2)  # (n, d) each
        k1, k2 = self.teacher_project(v1), self.teacher_project(v2)  # no gradient
        assert self.head is not None
        loss = self.head.loss(q1, k2)["loss"] + self.head.loss(q2, k1)["loss"]
        return {"loss": loss}
