"""Batch augments that mix samples and their (dense) targets: Mixup and CutMix.

Provenance: MMPretrain ``models/utils/batch_augments/{mixup,cutmix}.py``
(Zhang et al., 2018, "mixup: Beyond Empirical Risk Minimization"; Yun et al.,
2019, "CutMix"; the box logic follows timm). Each takes a float image batch
(N, C, H, W) and dense targets (N, K) and returns mixed versions of both.

Differences from MMPretrain: random numbers come from torch's generator (seeded
by ``torch.manual_seed``, per-device) instead of numpy's global state; ``alpha``
may be written as an int (MMPretrain asserts a float); inputs are not modified
in place; ``cutmix_minmax`` is validated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseBatchAugment

__all__ = ["CutMix", "Mixup", "sample_beta"]


def sample_beta(alpha: float) -> float:
    """Draw λ ~ Beta(alpha, alpha) from torch's global generator."""
    a = torch.tensor(float(alpha), dtype=torch.float64)
    return float(torch.distributions.Beta(a, a).sample())


def _check(inputs: Tensor, targets: Tensor, who: str) -> None:
    if targets.dim() != 2 or targets.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"{who} needs dense targets (N, num_classes) for the {inputs.shape[0]} inputs, got "
            f"shape {tuple(targets.shape)}; class indices must be one-hot encoded first"
        )


class Mixup(BaseBatchAugment):
    """Mixup: blend each sample (and its target) with another sample of the batch.

    x' = λ·x + (1-λ)·x[perm], y' = λ·y + (1-λ)·y[perm], λ ~ Beta(alpha, alpha).

    Args:
        alpha: Beta distribution parameter (> 0); 1 gives a uniform λ.
        num_classes: Number of classes of the one-hot targets; only needed when
            the model's head does not declare it.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"alpha": 0.8}

    def __init__(
        self, *, alpha: Annotated[float, Field(gt=0)], num_classes: Annotated[int, Field(gt=0)] | None = None
    ) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)
        self.num_classes = num_classes

    def forward(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Return mixed ``(inputs, targets)``.

        Args:
            inputs: Float images (N, C, H, W).
            targets: Dense targets (N, K).

        """
        _check(inputs, targets, type(self).__name__)
        lam = sample_beta(self.alpha)
        perm = torch.randperm(inputs.shape[0], device=inputs.device)
        mixed_inputs, lam = self.mix_inputs(inputs, perm, lam)  # (N, C, H, W)
        targets = targets.float()
        mixed_targets = lam * targets + (1 - lam) * targets[perm]  # (N, K)
        return mixed_inputs, mixed_targets

    def mix_inputs(self, inputs: Tensor, perm: Tensor, lam: float) -> tuple[Tensor, float]:
        """Blend ``inputs`` with ``inputs[perm]`` by ``lam``; return them and the targets' λ."""
        return lam * inputs + (1 - lam) * inputs[perm], lam

    def extra_repr(self) -> str:
        """Show ``alpha``."""
        return f"alpha={self.alpha}"


class CutMix(Mixup):
    """CutMix: paste a random box from another sample; targets mix by the box's area.

    Args:
        alpha: Beta distribution parameter (> 0) of the pasted-area fraction.
        cutmix_minmax: [min, max] box side as a fraction of the image side; when
            given, the box size is drawn uniformly from it instead of from alpha.
        correct_lam: Recompute λ from the box actually pasted (clipped at the
            image border), so the targets match the pixels.
        num_classes: Number of classes of the one-hot targets; only needed when
            the model's head does not declare it.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"alpha": 1.0}

    def __init__(
        self,
        *,
        alpha: Annotated[float, Field(gt=0)],
        cutmix_minmax: tuple[float, float] | None = None,
        correct_lam: bool = True,
        num_classes: Annotated[int, Field(gt=0)] | None = None,
    ) -> None:
        super().__init__(alpha=alpha, num_classes=num_classes)
        for name, msg in self.spec_issues({"cutmix_minmax": cutmix_minmax}):
            raise ValueError(f"CutMix.{name}: {msg}")
        self.cutmix_minmax = cutmix_minmax
        self.correct_lam = correct_lam

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """``cutmix_minmax`` must be 0 < min < max <= 1."""
        mm = params.get("cutmix_minmax")
        if mm is not None and not 0 < mm[0] < mm[1] <= 1:
            yield "cutmix_minmax", f"must satisfy 0 < min < max <= 1, got {list(mm)}"

    def _randint(self, low: int, high: int) -> int:
        """Uniform integer in [low, high) (``low`` if the range is empty)."""
        return low if high <= low else int(torch.randint(low, high, ()).item())

    def box(self, height: int, width: int, lam: float) -> tuple[tuple[int, int, int, int], float]:
        """Draw the box ``(y1, y2, x1, x2)`` and return it with the (corrected) λ."""
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            cut_h = self._randint(int(height * lo), int(height * hi))
            cut_w = self._randint(int(width * lo), int(width * hi))
            y1 = self._randint(0, height - cut_h)
            x1 = self._randint(0, width - cut_w)
            y2, x2 = y1 + cut_h, x1 + cut_w
        else:
            ratio = (1 - lam) ** 0.5
            cut_h, cut_w = int(height * ratio), int(width * ratio)
            cy, cx = self._randint(0, height), self._randint(0, width)
            y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        if self.correct_lam or self.cutmix_minmax is not None:
            lam = 1.0 - (y2 - y1) * (x2 - x1) / float(height * width)
        return (y1, y2, x1, x2), lam

    def mix_inputs(self, inputs: Tensor, perm: Tensor, lam: float) -> tuple[Tensor, float]:
        """Replace a box of each image by ``inputs[perm]``'s; return them and the box's λ."""
        (y1, y2, x1, x2), lam = self.box(inputs.shape[-2], inputs.shape[-1], lam)
        mixed = inputs.clone()
        mixed[:, :, y1:y2, x1:x2] = inputs[perm, :, y1:y2, x1:x2]
        return mixed, lam  # (N, C, H, W)
