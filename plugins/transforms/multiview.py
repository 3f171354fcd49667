"""Multi-view augmentation for self-supervised learning (MMPretrain's ``MultiView``).

Contrastive and self-distillation methods (MoCo, SimCLR, BYOL, ...) feed the model
several independently augmented views of each image. ``MultiView`` runs its
``pipeline`` ``num_views`` times with fresh random draws and returns the list of
views; the loaders then yield ``(list of view batches, labels)``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseTransform, Pipeline, TransformRef, build_component

__all__ = ["MultiView"]


class MultiView(BaseTransform):
    """Return ``num_views`` views of every image, each from its own run of ``pipeline``.

    Args:
        num_views: How many views to produce.
        pipeline: Transforms applied to make each view (random ones draw anew per view).

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"pipeline": [{"type": "RandomCrop", "size": 8}], "num_views": 2}

    def __init__(
        self, *, num_views: Annotated[int, Field(ge=1)] = 2, pipeline: list[TransformRef],
    ) -> None:
        super().__init__()
        modules = [build_component("transform", t) for t in pipeline]
        if any(isinstance(m, MultiView) for m in modules):
            raise ValueError("MultiView cannot contain another MultiView")
        self.num_views = num_views
        self.pipeline = torch.nn.ModuleList(modules)
        self._run = Pipeline(modules)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """(C, H, W) or (N, C, H, W) uint8 -> list of ``num_views`` transformed copies."""
        views = [self._run(images, generator=generator) for _ in range(self.num_views)]
        if any(isinstance(v, list) for v in views):  # pragma: no cover - guarded in __init__
            raise ValueError("MultiView's pipeline must return images, not views")
        return views  # type: ignore[return-value]

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return f"num_views={self.num_views}"
