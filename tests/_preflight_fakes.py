"""Source text of a small third-party plugin ("fake-ssl") for the whole-step and attribution tests.

A BYOL-like algorithm written from the docs: its own model, head (with a nested
predictor), MLP neck and a backbone; plus a backbone whose ``__init__`` reads tensor
values (fine on the CPU, fails on the meta device) and one that raises mid-training.
None of them implements the ``data_issues`` protocol, so only the whole-step check
can tell that their data does not fit.
"""

SSL = '''
from __future__ import annotations
from typing import Annotated, Any, Sequence
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from pretrain.components import BaseBackbone, BaseHead, BaseNeck, BackboneRef, HeadRef, NeckRef
from pretrain.selfsup import BaseSelfSupervisor


class SmallConv(BaseBackbone):
    """A two-stage conv backbone.

    Args:
        in_channels: Image channels.
        width: Output channels.
    """

    def __init__(self, *, in_channels: int = 1, width: Annotated[int, Field(gt=0)] = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1))

    def forward(self, x):
        return (self.body(x).mean((2, 3)),)  # (N, width)


class MLP(BaseNeck):
    """Linear -> ReLU -> linear on the last level.

    Args:
        in_channels: Input width.
        out_channels: Output width.
    """

    def __init__(self, *, in_channels: Annotated[int, Field(gt=0)], out_channels: Annotated[int, Field(gt=0)]) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.net = nn.Sequential(nn.Linear(in_channels, 16), nn.ReLU(), nn.Linear(16, out_channels))

    def forward(self, inputs):
        return (self.net(inputs[-1]),)


class PredictHead(BaseHead):
    """Predicts the target projection from the online one (negative cosine similarity).

    Args:
        predictor: The predictor network (a neck).
    """

    def __init__(self, *, predictor: NeckRef) -> None:
        super().__init__()
        self.predictor = predictor

    def loss(self, online, target):
        pred = self.predictor((online,))[0]
        return {"loss": -F.cosine_similarity(pred, target.detach(), dim=-1).mean()}


class TwoViewSSL(BaseSelfSupervisor):
    """Two views: the online projection of one predicts the projection of the other.

    Args:
        backbone: Encoder.
        neck: Projector.
        head: Owns the predictor and the loss.
        mean: Per-channel mean.
        std: Per-channel std.
    """

    def __init__(self, *, backbone: BackboneRef, neck: NeckRef, head: HeadRef,
                 mean: Sequence[float] = (127.5,), std: Sequence[float] = (127.5,)) -> None:
        super().__init__(backbone=backbone, neck=neck, head=head, mean=mean, std=std)

    def loss(self, inputs, targets=None):
        v1, v2 = (self.preprocess(v) for v in self.views(inputs, 2))
        online = self.neck(self.backbone(v1))[0]
        with torch.no_grad():
            target = self.neck(self.backbone(v2))[0]
        return self.head.loss(online, target)


class DropPathRates(BaseBackbone):
    """Stochastic-depth rates read back from a tensor (works on the CPU, not on meta).

    Args:
        depth: Blocks.
        rate: Largest drop-path rate.
    """

    def __init__(self, *, depth: int = 3, rate: float = 0.1) -> None:
        super().__init__()
        self.rates = torch.linspace(0, rate, depth).tolist()  # reads values: fails on meta
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return (self.conv(x),)


class Fragile(BaseBackbone):
    """Raises on its third training forward (a bug that shows only mid-run).

    Args:
        width: Output channels.
    """

    def __init__(self, *, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == 3:
                raise ValueError("fragile: lost track of its running state")
        return (self.conv(x),)
'''

SSL_EPS = {
    "pretrain.backbones": {"SmallConv": "fakeplug_ssl.algo:SmallConv",
                           "DropPathRates": "fakeplug_ssl.algo:DropPathRates",
                           "Fragile": "fakeplug_ssl.algo:Fragile"},
    "pretrain.necks": {"MLP": "fakeplug_ssl.algo:MLP"},
    "pretrain.heads": {"PredictHead": "fakeplug_ssl.algo:PredictHead"},
    "pretrain.models": {"TwoViewSSL": "fakeplug_ssl.algo:TwoViewSSL"},
}

VIEWS = {"type": "MultiView", "num_views": 2, "pipeline": [{"type": "RandomCrop", "size": 16, "padding": 2}]}


def ssl_spec(*, predictor_in: int = 8, val_pipeline: list | None = None) -> dict:
    """A TwoViewSSL spec on the digits; ``predictor_in`` must be the projector's width, 8."""
    return {
        "model": {
            "type": "TwoViewSSL",
            "backbone": {"type": "SmallConv", "width": 8},
            "neck": {"type": "MLP", "in_channels": 8, "out_channels": 8},
            "head": {"type": "PredictHead",
                     "predictor": {"type": "MLP", "in_channels": predictor_in, "out_channels": 8}},
        },
        "data": {
            "batch_size": 16,
            "image_size": 16,
            "train": {"type": "Digits", "split": "train", "image_size": 16, "pipeline": [VIEWS]},
            "val": {"type": "Digits", "split": "val", "image_size": 16,
                    "pipeline": [VIEWS] if val_pipeline is None else val_pipeline},
        },
        "train": {"epochs": 1, "max_steps": 4, "optimizer": {"type": "SGD", "lr": 0.01}},
    }
