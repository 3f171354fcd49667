"""Templates of ``pretrain new-plugin`` (``string.Template``: ``$Prefix``, ``$package``, ...).

Each component template is a complete, documented, typed component that passes
the conformance kit as generated; the tests template runs the kit on them. Kept
as string constants (not package data) so that the scaffold works from any
installation of ``pretrain``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["COMPONENTS", "INIT", "PYPROJECT", "README", "TESTS"]

PYPROJECT: Final = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "pretrain components: $summary"
requires-python = ">=3.10"
dependencies = ["pretrain>=$pretrain_version"]

# One entry point per component: the name is the spec's `type`, the value module:Class.
$entry_points
[tool.setuptools.packages.find]
where = ["src"]
"""

INIT: Final = '''\
"""$dist: components for pretrain.

They are registered by the entry points in ``pyproject.toml`` (importing this
package registers nothing).
"""

__version__ = "0.1.0"
'''

BACKBONE: Final = '''\
"""${Prefix}Backbone: a small convolutional backbone (replace the layers with yours)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseBackbone

__all__ = ["${Prefix}Backbone"]


class ${Prefix}Backbone(BaseBackbone):
    """Stacked conv-BN-ReLU stages; every stage after the first halves the resolution.

    Args:
        in_channels: Channels of the input images.
        base_channels: Channels of the first stage; each later stage doubles them.
        num_stages: Number of stages.

    """

    # What weight init applies after construction (MMPretrain's init_cfg, as data).
    default_init: ClassVar[list[dict[str, Any]]] = [
        {"type": "Kaiming", "layer": ["Conv2d"]},
        {"type": "Constant", "val": 1, "layer": ["BatchNorm2d"]},
    ]
    # A small instance for the conformance kit and the docs.
    example_config: ClassVar[dict[str, Any]] = {"base_channels": 8, "num_stages": 2}

    def __init__(
        self,
        *,
        in_channels: Annotated[int, Field(gt=0)] = 3,
        base_channels: Annotated[int, Field(gt=0)] = 16,
        num_stages: Annotated[int, Field(ge=1, le=5)] = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(num_stages):
            out = base_channels * 2**i
            layers += [
                nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.layers = nn.Sequential(*layers)
        #: Channels of the returned feature map (a head's in_channels).
        self.out_channels = channels

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Return a 1-tuple with the last stage's map (B, out_channels, H', W')."""
        return (self.layers(x),)  # always a tuple, one entry per output level
'''

NECK: Final = '''\
"""${Prefix}Neck: pools each feature map to a vector (replace with your neck)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from pretrain.components import BaseNeck

__all__ = ["${Prefix}Neck"]


class ${Prefix}Neck(BaseNeck):
    """Global pooling of every level of the backbone's tuple: (N, C, H, W) -> (N, C).

    Args:
        mode: Average or max pooling.

    """

    def __init__(self, *, mode: Literal["avg", "max"] = "avg") -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1) if mode == "avg" else nn.AdaptiveMaxPool2d(1)

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """A tuple in, a tuple out: one (N, C) vector per level."""
        return tuple(self.pool(x).flatten(1) for x in inputs)
'''

HEAD: Final = '''\
"""${Prefix}Head: a linear classifier that owns its loss (replace the layers with yours)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import BaseHead, LossRef, build_component

__all__ = ["${Prefix}Head"]

_DEFAULT_LOSS = {"type": "$default_loss"}


class ${Prefix}Head(BaseHead):
    """Linear classifier on the last feature level; ``predict`` returns softmax scores.

    Args:
        num_classes: Number of classes.
        in_channels: Width of the incoming (pooled) feature, (N, in_channels).
        loss: The classification loss (a loss table).

    """

    default_init: ClassVar[list[dict[str, Any]]] = [{"type": "Normal", "layer": "Linear", "std": 0.01}]
    example_config: ClassVar[dict[str, Any]] = {"num_classes": 5, "in_channels": 16}

    def __init__(
        self,
        *,
        num_classes: Annotated[int, Field(gt=0)],
        in_channels: Annotated[int, Field(gt=0)],
        loss: LossRef = _DEFAULT_LOSS,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(in_channels, num_classes)
        self.loss_module = build_component("loss", loss)

    def forward(self, feats: tuple[Tensor, ...]) -> Tensor:
        """Logits (N, num_classes) of the last level of the tuple."""
        return self.fc(feats[-1])

    def loss(self, feats: tuple[Tensor, ...], targets: Tensor) -> dict[str, Tensor]:
        """``{"loss": ..., "accuracy/top1": ...}``; targets are indices (N,) or scores (N, C)."""
        logits = self(feats)
        if getattr(self.loss_module, "target_kind", "index") == "dense" and targets.dim() == 1:
            targets = F.one_hot(targets.long(), self.num_classes).to(logits.dtype)
        labels = targets.argmax(-1) if targets.dim() == 2 else targets
        accuracy = (logits.argmax(-1) == labels).float().mean().detach() * 100
        return {"loss": self.loss_module(logits, targets), "accuracy/top1": accuracy}

    def predict(self, feats: tuple[Tensor, ...]) -> Tensor:
        """Softmax scores (N, num_classes)."""
        return self(feats).softmax(dim=-1)
'''

LOSS: Final = '''\
"""${Prefix}Loss: soft-target cross-entropy built with ``weighted_loss`` (replace the formula)."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from pretrain.components import BaseLoss, TargetKind
from pretrain.losses import Reduction, resolve_reduction, weighted_loss

__all__ = ["${Prefix}Loss"]


@weighted_loss
def _per_sample(pred: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of logits (N, C) with class indices (N,) or scores (N, C): (N,)."""
    log_p = pred.log_softmax(dim=-1)
    if target.dim() == 1:
        target = F.one_hot(target.long(), pred.shape[-1]).to(log_p.dtype)
    return -(target * log_p).sum(dim=-1)


class ${Prefix}Loss(BaseLoss):
    """Cross-entropy for class indices or dense (one-hot, mixed) targets.

    Args:
        reduction: How per-sample losses are combined: none, mean or sum.
        loss_weight: Factor applied to the reduced loss.

    """

    target_kind: ClassVar[TargetKind] = "both"

    def __init__(self, *, reduction: Reduction = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Return the weighted, reduced, ``loss_weight``-scaled loss."""
        reduction = resolve_reduction(self.reduction, reduction_override)
        return self.loss_weight * _per_sample(pred, target, weight, reduction=reduction, avg_factor=avg_factor)
'''

MODEL: Final = '''\
"""${Prefix}SelfSup: a self-supervised algorithm (rotation prediction; replace the pretext task)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from pretrain import PretrainError
from pretrain.components import BackboneRef, HeadRef, NeckRef
from pretrain.selfsup import IMAGENET_MEAN, IMAGENET_STD, BaseSelfSupervisor

__all__ = ["${Prefix}SelfSup"]


class ${Prefix}SelfSup(BaseSelfSupervisor):
    """Pretrain a backbone by predicting which of four rotations (0/90/180/270°) an image shows.

    Args:
        backbone: The encoder being pretrained.
        neck: Pools the backbone features.
        head: A classification head with ``num_classes = 4``.
        mean: Per-channel mean of the 0..255 input (one value per channel).
        std: Per-channel standard deviation of the 0..255 input.
        to_rgb: Reverse the channel order before normalising (BGR input).

    """

    example_config: ClassVar[dict[str, Any]] = {
        "backbone": {"type": "$backbone", $backbone_example},
        "neck": {"type": "$neck"},
        "head": {"type": "$head", "num_classes": 4, "in_channels": $example_channels},
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
        if getattr(self.head, "num_classes", 4) != 4:
            raise PretrainError("the head must have num_classes = 4 (one per rotation)",
                                hint="Set model.head.num_classes = 4.")
        #: Not a classifier of the dataset's classes (the engine must not score it).
        self.num_classes = None

    def loss(self, inputs: Tensor | Sequence[Tensor], targets: Tensor | None = None) -> dict[str, Tensor]:
        """The pretext loss; dataset labels are ignored."""
        x = self.preprocess(self.views(inputs)[0])  # (N, C, H, W)
        rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])  # (4N, C, H, W)
        labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])  # (4N,)
        assert self.neck is not None and self.head is not None
        out: dict[str, Tensor] = self.head.loss(self.neck(self.backbone(rotated)), labels)
        return out
'''

#: kind -> (module name, class suffix, template).
COMPONENTS: Final[dict[str, tuple[str, str, str]]] = {
    "backbone": ("backbones", "Backbone", BACKBONE),
    "neck": ("necks", "Neck", NECK),
    "head": ("heads", "Head", HEAD),
    "loss": ("losses", "Loss", LOSS),
    "model": ("models", "SelfSup", MODEL),
}

TESTS: Final = '''\
"""$dist's tests: pretrain's conformance kit on every component, and the specs build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pretrain
from pretrain.testing import parametrize_with_checks

ROOT = Path(__file__).resolve().parents[1]


@parametrize_with_checks($names)
def test_conformance(check):
    """One conformance check of one component (ids: kind:Name-check_name)."""
    check()


@pytest.mark.parametrize("spec", $specs)
def test_spec_builds_and_computes_a_loss(spec):
    """The spec validates, builds, and its model returns a finite loss."""
    model = pretrain.build(ROOT / spec, seed=0)
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    out = model.loss(images, torch.arange(4))
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
'''

README: Final = """\
# $dist

pretrain components: $summary.

```bash
pip install .                     # registers the components (entry points)
pytest tests                      # pretrain's conformance kit on every component
pretrain list-components          # they are listed, from distribution $dist
pretrain validate $spec           # your components in a spec, shape-checked
pretrain train $spec              # train it on the bundled digits
```

Each component is a typed class: its spec fields are its keyword-only
`__init__` arguments, documented in the class docstring's `Args:` section
(`pretrain describe NAME` shows them). Declare each one in `pyproject.toml`
under `[project.entry-points."pretrain.<kind>s"]`. See pretrain's
`docs/writing-plugins.md` for the full guide.
"""
