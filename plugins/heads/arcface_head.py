"""``ArcFaceClsHead``: additive angular margin (ArcFace), with sub-centers, for metric learning.

Provenance: MMPretrain ``models/heads/margin_head.py`` (``ArcFaceClsHead``,
``NormProduct``); Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition" (arXiv:1801.07698) and "Sub-center ArcFace" (ECCV 2020). Same fields,
parameter layout (``norm_product.weight`` of shape (num_classes * num_subcenters,
in_channels), no bias) and formulas: the logit of class j is ``scale * cos(theta_j)``,
and during training the target class gets ``scale * cos(theta_y + m_y)`` (with
MMPretrain's fall-back ``cos(theta) - sin(pi - m) * m`` beyond ``theta > pi - m``,
or ``easy_margin``).

Differences from MMPretrain: dense targets (Mixup/CutMix scores) apply each class's
margin in proportion to its target weight (``t * phi + (1 - t) * cos``, which is
MMPretrain's formula with the one-hot replaced by the dense target; MMPretrain puts
the whole margin on the original label); ``acos`` sees the cosine clamped to
(-1, 1), so a cosine that rounds to +-1 gives a finite gradient instead of NaN; an
integer margin or a margins file with a wrong count is a validation error naming
the count (MMPretrain asserts); the logits are always computed in float32, as
MMPretrain disables autocast.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pretrain.components import LossRef
from pretrain_builtins.heads._common import classification_loss
from pretrain_builtins.heads.cls_head import ClsHead

__all__ = ["ArcFaceClsHead", "NormProduct", "read_margins"]

_DEFAULT_LOSS: dict[str, Any] = {"type": "CrossEntropyLoss", "loss_weight": 1.0}
#: Keeps acos away from +-1, where its gradient is infinite.
_EPS = 1e-7

PositiveInt = Annotated[int, Field(gt=0)]


class NormProduct(nn.Linear):
    """Cosine between the normalised input and each normalised weight row; max over sub-centers.

    Args:
        in_features: Input width.
        out_features: Classes.
        k: Sub-centers per class (rows ``c * k .. c * k + k - 1`` belong to class c).

    """

    def __init__(self, in_features: int, out_features: int, k: int = 1) -> None:
        super().__init__(in_features, out_features * k, bias=False)
        self.out_features_per_center = out_features
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_features) -> cosines (N, out_features)."""
        cosine = F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))  # (N, C * k)
        if self.k == 1:
            return cosine
        return cosine.view(-1, self.out_features_per_center, self.k).amax(dim=2)  # (N, C)


def read_margins(path: str) -> list[float]:
    """Margins from a text file: one number per line (line i = class i); blank lines ignored.

    Raises:
        ValueError: The file cannot be read or a line is not a number.

    """
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read margins file {path!r}: {exc.strerror or exc}") from None
    values = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                values.append(float(line))
            except ValueError:
                raise ValueError(f"margins file {path!r} line {number}: {line.strip()!r} is not a number") from None
    return values


def _margin_values(margins: float | list[float] | str, num_classes: int) -> list[float]:
    if isinstance(margins, str):
        return read_margins(margins)
    if isinstance(margins, int | float):
        return [float(margins)] * num_classes
    return [float(m) for m in margins]


class ArcFaceClsHead(ClsHead):
    """ArcFace head: scaled cosine logits, an additive angular margin on the target class in training.

    Evaluation (``predict``) returns the softmax of ``scale * cos(theta)``; a retriever
    uses the features before the head, so the head only shapes them during training.

    Args:
        num_classes: Training classes (identities).
        in_channels: Width of the input feature (N, in_channels).
        num_subcenters: Sub-centers per class (sub-center ArcFace); a class's cosine
            is the largest over its sub-centers.
        scale: Scale s of the cosine logits.
        margins: The angular margin m (radians): one value for every class, one per
            class, or the path of a text file with one value per line.
        easy_margin: Apply the margin only where cos(theta) > 0 (else the
            monotonic fall-back cos(theta) - sin(m) * m beyond theta > pi - m).
        loss: The classification loss (a loss table).

    """

    example_config: ClassVar[dict[str, Any]] = {"num_classes": 5, "in_channels": 16, "num_subcenters": 2,
                                                "scale": 16.0}

    def __init__(
        self,
        *,
        num_classes: PositiveInt,
        in_channels: PositiveInt,
        num_subcenters: PositiveInt = 1,
        scale: Annotated[float, Field(gt=0)] = 64.0,
        margins: float | list[float] | str = 0.5,
        easy_margin: bool = False,
        loss: LossRef = _DEFAULT_LOSS,
    ) -> None:
        problems = list(self.spec_issues({"num_classes": num_classes, "margins": margins}))
        if problems:
            raise ValueError("; ".join(f"{name}: {msg}" for name, msg in problems))
        self.num_classes = num_classes
        super().__init__(loss=loss)
        self.in_channels = in_channels
        self.num_subcenters = num_subcenters
        self.scale = scale
        self.easy_margin = easy_margin
        self.norm_product = NormProduct(in_channels, num_classes, num_subcenters)
        values = torch.tensor(_margin_values(margins, num_classes), dtype=torch.float32)
        # Configuration, not learned weights: not in checkpoints (as in MMPretrain).
        self.margins: Tensor
        self.sinm_m: Tensor
        self.threshold: Tensor
        self.register_buffer("margins", values, persistent=False)
        self.register_buffer("sinm_m", torch.sin(math.pi - values) * values, persistent=False)
        self.register_buffer("threshold", torch.cos(math.pi - values), persistent=False)

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """Margins: as many as classes (a list or a file), each in [0, pi)."""
        num_classes, margins = params.get("num_classes"), params.get("margins", 0.5)
        try:
            values = _margin_values(margins, num_classes or 0)
        except ValueError as exc:
            yield "margins", str(exc)
            return
        if not isinstance(margins, int | float) and isinstance(num_classes, int) and len(values) != num_classes:
            where = f"the file {margins!r} holds" if isinstance(margins, str) else "the list has"
            yield "margins", f"{where} {len(values)} margins but num_classes is {num_classes}; give one per class"
        bad = [m for m in values if not 0 <= m < math.pi]
        if bad:
            yield "margins", f"angular margins are radians in [0, pi), got {bad[0]:g}"

    def cosine(self, feats: tuple[Tensor, ...] | Tensor) -> Tensor:
        """cos(theta) (N, num_classes) between the features and the class centers, in float32."""
        x = self.pre_logits(feats).float()  # (N, in_channels)
        if x.device.type not in ("cpu", "cuda"):
            return self.norm_product(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.norm_product(x)

    def forward(self, feats: tuple[Tensor, ...] | Tensor, targets: Tensor | None = None) -> Tensor:
        """Logits (N, num_classes): ``scale * cos``; with ``targets``, the target classes get the margin."""
        cosine = self.cosine(feats)
        if targets is None:
            return self.scale * cosine
        return self.scale * self.with_margin(cosine, targets)

    def with_margin(self, cosine: Tensor, targets: Tensor) -> Tensor:
        """cos(theta + m) on the target classes (weighted by dense targets), cos(theta) elsewhere."""
        theta = torch.acos(cosine.clamp(-1 + _EPS, 1 - _EPS))
        phi = torch.cos(theta + self.margins)  # (N, C)
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:  # keep phi monotonic in theta beyond pi - m
            phi = torch.where(cosine > self.threshold, phi, cosine - self.sinm_m)
        if targets.dim() == 2 and targets.is_floating_point():
            weight = targets.to(cosine.dtype)  # dense (Mixup/CutMix) scores
        else:
            weight = F.one_hot(targets.long().view(-1), self.num_classes).to(cosine.dtype)  # (N, C)
        return weight * phi + (1 - weight) * cosine

    def loss(self, feats: tuple[Tensor, ...], targets: Tensor) -> dict[str, Tensor]:
        """``{"loss": ...}`` of the margin logits against ``targets`` (indices (N,) or dense (N, C))."""
        logits = self(feats, targets)
        return classification_loss(self.loss_module, logits, targets, topk=self.topk, cal_acc=self.cal_acc)

    def predict(self, feats: tuple[Tensor, ...]) -> Tensor:
        """Softmax of the scaled cosines (N, num_classes), no margin."""
        return self(feats).softmax(dim=-1)
