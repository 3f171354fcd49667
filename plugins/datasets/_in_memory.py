"""A dataset whose images are decoded once into one uint8 tensor (CIFAR, Digits)."""

from __future__ import annotations

from torch import Tensor

from pretrain.components import BaseDataset

__all__ = ["InMemoryDataset"]


class InMemoryDataset(BaseDataset):
    """``BaseDataset`` over ``_images`` uint8 (N, C, H, W) and ``_labels`` long (N,).

    Subclasses fill both tensors in ``__init__``; everything else comes from here.
    """

    _images: Tensor
    _labels: Tensor

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def targets(self) -> Tensor:
        """Labels long (N,)."""
        return self._labels

    @property
    def channels(self) -> int:
        """Channels of the stored images (1 or 3)."""
        return int(self._images.shape[1])

    def load_image(self, index: int) -> Tensor:
        """Image ``index`` as uint8 (C, H, W)."""
        return self._images[index]

    def image_shape(self) -> tuple[int, int, int]:
        """Every image is (C, H, W) of the stored tensor."""
        _, c, h, w = self._images.shape
        return (int(c), int(h), int(w))

    def load_all(self) -> tuple[Tensor, Tensor]:
        """Every image uint8 (N, C, H, W) and labels (N,)."""
        return self._images, self._labels
