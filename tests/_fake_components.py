"""Source text of small, real components used by the fake distributions in tests."""

GOOD = '''
from __future__ import annotations
from typing import Annotated, Literal
import torch
from torch import nn
from pydantic import Field
from pretrain.components import BaseBackbone, BaseHead, BaseLoss, BaseModel, LossRef, BackboneRef, HeadRef, build_component


class TinyNet(BaseBackbone):
    """A two-conv backbone for tests.

    Args:
        channels: Output channels.
        depth: Number of conv layers.
        act: Activation.
    """

    def __init__(self, *, channels: Annotated[int, Field(gt=0)] = 8, depth: Literal[1, 2] = 1,
                 act: Literal["relu", "gelu"] = "relu") -> None:
        super().__init__()
        layers = [nn.Conv2d(3, channels, 3, padding=1)]
        if depth == 2:
            layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return (self.body(x),)


class PlainLoss(nn.Module):
    """A plain nn.Module loss (no base class).

    Args:
        loss_weight: Scale.
    """

    def __init__(self, *, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        return self.loss_weight * nn.functional.cross_entropy(pred, target)


class DenseLoss(BaseLoss):
    """Needs dense targets.

    Args:
        loss_weight: Scale.
    """

    target_kind = "dense"

    def __init__(self, *, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        return self.loss_weight * (pred - target).abs().mean()


class PoolHead(BaseHead):
    """Global pool + linear.

    Args:
        in_channels: Input channels.
        num_classes: Classes.
        loss: The loss.
    """

    supplies_targets = frozenset({"index"})

    def __init__(self, *, in_channels: int, num_classes: Annotated[int, Field(gt=0)],
                 loss: LossRef = {"type": "PlainLoss"}) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)
        self.loss_module = build_component("loss", loss)

    def predict(self, feats):
        return self.fc(feats[-1].mean((2, 3)))

    def loss(self, feats, targets):
        return {"loss": self.loss_module(self.predict(feats), targets)}


class Net(BaseModel):
    """A classifier.

    Args:
        backbone: Backbone.
        head: Head.
    """

    def __init__(self, *, backbone: BackboneRef, head: HeadRef) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head.predict(self.backbone(x))

    def loss(self, inputs, targets=None):
        return self.head.loss(self.backbone(inputs), targets)
'''

BROKEN_IMPORT = "raise ImportError('needs libfoo')\n"

NOT_A_MODULE = '''
class NotAModule:
    """Not an nn.Module."""
    def __init__(self, *, x: int = 1) -> None:
        self.x = x
'''

UNTYPED = '''
from torch import nn
class Untyped(nn.Module):
    """Missing annotations."""
    def __init__(self, depth=18):
        super().__init__()
'''

HOOKS = '''
import pretrain
from torch import nn


class HookNeck(nn.Module):
    """Registered from a hook.

    Args:
        scale: Scale.
    """

    def __init__(self, *, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return tuple(t * self.scale for t in x)


@pretrain.hookimpl
def pretrain_register_components(register):
    register("neck", "HookNeck", HookNeck)
'''
