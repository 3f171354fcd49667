"""Contracts of the ``dataset`` and ``transform`` kinds, and the helpers both paths share.

Third-party datasets subclass (or duck-type) :class:`BaseDataset`; transforms
subclass :class:`BaseTransform`. Import them from :mod:`pretrain.components`, their
one documented home (this private module only keeps that file short).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Annotated, ClassVar

import torch
from torch import Tensor, nn

from pretrain.errors import PretrainError
from pretrain.registry.kinds import ComponentRef

__all__ = [
    "BaseDataset",
    "BaseTransform",
    "Batch",
    "Pipeline",
    "SkipSample",
    "TransformRef",
    "mix_seed",
    "to_channels",
]

#: A nested transform spec (``MultiView.pipeline``); built by the core before ``__init__``.
TransformRef = Annotated[nn.Module, ComponentRef("transform")]

#: What loaders yield: images uint8 (N, C, H, W) (or a list of views) and labels long (N,).
Batch = tuple[Tensor | list[Tensor], Tensor]

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Hash integers into one 63-bit seed (splitmix64 chain; stable across platforms).

    Used to derive independent generator seeds from ``(seed, epoch, batch, ...)``.
    """
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state >> 1


def to_channels(images: Tensor, channels: int) -> Tensor:
    """Convert uint8 images (..., C, H, W) between grayscale (1) and RGB (3).

    RGB -> gray uses Pillow's ITU-R 601-2 luma in the same fixed-point arithmetic,
    so a grey image stored as RGB comes back unchanged.
    """
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).contiguous()
    if have == 3 and channels == 1:
        r, g, b = images.unbind(-3)
        luma = (r.int() * 19595 + g.int() * 38470 + b.int() * 7471 + 0x8000) >> 16
        return luma.to(torch.uint8).unsqueeze(-3)
    raise PretrainError(
        f"cannot convert {have}-channel images to {channels} channels",
        hint="Datasets must yield 1 (grayscale) or 3 (RGB) channel images.",
    )


class SkipSample(Exception):  # noqa: N818 - a signal, not an error
    """Raised by ``BaseDataset.load_image`` to drop an unreadable sample (when allowed)."""


class BaseDataset:
    """Dataset contract (kind ``dataset``, entry-point group ``pretrain.datasets``).

    A dataset is a labelled list of images; it knows nothing about augmentation
    or batching (the ``pipeline`` and the loaders do that). Implement ``__len__``,
    ``classes``, ``targets`` and ``load_image``; override ``image_shape`` and
    ``load_all`` when the whole dataset can be held as one tensor cheaply.
    """

    component_kind: ClassVar[str] = "dataset"
    #: Class names; label ``i`` is ``classes[i]``.
    classes: Sequence[str] = ()
    #: Channels the spec asked for (None: follow the model's ``in_channels``).
    requested_channels: int | None = None
    #: False for images without labels (self-supervised data): ``targets`` are all -1
    #: and ``classes`` is empty; models that predict classes refuse such data.
    labelled: bool = True

    def gallery_matches(self) -> Sequence[Sequence[int]] | None:
        """Index-labelled retrieval queries (InShop style): each sample's matching gallery indices.

        None for ordinary datasets. A dataset that returns lists here labels each
        sample by its own index (``targets[i] == i``) and has no ``classes``.
        """
        return None

    def __len__(self) -> int:
        raise NotImplementedError  # pragma: no cover - abstract

    @property
    def targets(self) -> Tensor:
        """Labels long (N,), available without decoding any image."""
        raise NotImplementedError  # pragma: no cover - abstract

    @property
    def channels(self) -> int:
        """Channels of the images ``load_image`` returns (1 or 3)."""
        return 3

    def load_image(self, index: int) -> Tensor:
        """Decode image ``index`` as uint8 (C, H, W); raise ``SkipSample`` to drop it."""
        raise NotImplementedError  # pragma: no cover - abstract

    def image_shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` shared by every image, if known without decoding; else None."""
        return None

    def load_all(self) -> tuple[Tensor, Tensor]:
        """Every image as uint8 (N, C, H, W) with its labels (N,); skipped samples left out."""
        images, keep = [], []
        for i in range(len(self)):
            try:
                images.append(self.load_image(i))
            except SkipSample:
                continue
            keep.append(i)
        if not images:
            return torch.empty(0, self.channels, 1, 1, dtype=torch.uint8), self.targets[:0]
        return torch.stack(images), self.targets[torch.tensor(keep, dtype=torch.long)]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """``(image uint8 (C, H, W), label)`` (for interactive use)."""
        return self.load_image(index), int(self.targets[index])


class BaseTransform(nn.Module):
    """Transform contract (kind ``transform``, entry-point group ``pretrain.transforms``).

    ``forward(images, generator=None)`` takes uint8 (C, H, W) or a batch
    (N, C, H, W) and returns the same layout (``MultiView`` returns a list of
    views). Random transforms draw per-sample parameters from ``generator`` only
    (never the global RNG), which makes training resumable bit for bit. A plain
    ``nn.Module`` transform without a ``generator`` argument also works but uses
    the global RNG and, on batches, one random draw for the whole batch.
    """

    component_kind: ClassVar[str] = "transform"

    def forward(  # pragma: no cover - abstract
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> Tensor | list[Tensor]:
        """Transform ``images``."""
        raise NotImplementedError


def _takes_generator(module: nn.Module) -> bool:
    try:
        return "generator" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


class Pipeline:
    """A list of transforms applied in order; later transforms map over MultiView's views.

    Args:
        transforms: Built transform modules.

    """

    def __init__(self, transforms: Sequence[nn.Module]) -> None:
        self.transforms = list(transforms)
        self._with_generator = [_takes_generator(t) for t in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)

    def __call__(
        self, images: Tensor | list[Tensor], generator: torch.Generator | None = None
    ) -> Tensor | list[Tensor]:
        """Apply every transform to ``images`` (uint8 (C, H, W) or (N, C, H, W))."""
        for transform, with_gen in zip(self.transforms, self._with_generator, strict=True):
            kwargs = {"generator": generator} if with_gen else {}
            if isinstance(images, list):
                views = [transform(view, **kwargs) for view in images]
                if any(isinstance(v, list) for v in views):
                    raise PretrainError(
                        f"{type(transform).__name__} returned views of views",
                        hint="Use at most one MultiView per pipeline.",
                    )
                images = views
            else:
                images = transform(images, **kwargs)
        return images
