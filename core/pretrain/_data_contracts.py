"""Contracts of the ``dataset`` and ``transform`` kinds, and the helpers both paths share.

Third-party datasets subclass (or duck-type) :class:`BaseDataset`; transforms
subclass :class:`BaseTransform`. Import them from :mod:`pretrain.components`, their
one documented home (this private module only keeps that file short).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor, nn

from pretrain.errors import PretrainError
from pretrain.registry.kinds import ComponentRef

__all__ = [
    "BaseDataset",
    "BaseStreamDataset",
    "BaseTransform",
    "Batch",
    "Masked",
    "Pipeline",
    "ShardInfo",
    "SkipSample",
    "TransformRef",
    "mix_seed",
    "to_channels",
]

#: A nested transform spec (``MultiView.pipeline``); built by the core before ``__init__``.
TransformRef = Annotated[nn.Module, ComponentRef("transform")]


class Masked(tuple):  # type: ignore[type-arg]
    """Images together with their patch mask: what a mask-generator transform returns.

    ``Masked(images, mask)``: ``images`` is uint8 (C, H, W) / (N, C, H, W), or a list of
    such views; ``mask`` is bool (h, w) / (N, h, w) over the model's patch grid, True =
    masked. Transforms after the mask generator apply to ``images`` and keep the mask;
    the loaders stack the masks of a batch into (N, h, w) and the model's
    ``loss(inputs, targets)`` receives the ``Masked`` batch. A batch without a mask
    generator stays a plain tensor (or list of views), so nothing else changes.

    It is a named 2-tuple ``(images, mask)`` (like a ``NamedTuple`` that can also be
    rebuilt from one iterable, as ``tuple(...)`` is): generic code that rebuilds tuples,
    such as torch's ``pin_memory`` and the conformance kit's batch slicing, keeps it a
    ``Masked``.
    """

    __slots__ = ()
    #: Field names (also what torch's ``pin_memory`` recognises a named tuple by).
    _fields = ("images", "mask")

    def __new__(cls, images: Any, mask: Tensor | None = None) -> Masked:
        """``Masked(images, mask)``, or ``Masked((images, mask))`` from one iterable."""
        if mask is None:  # Masked((images, mask)): rebuilt from an iterable
            images, mask = images
        return super().__new__(cls, (images, mask))

    @property
    def images(self) -> Tensor | list[Tensor]:
        """The images (or list of views)."""
        return self[0]  # type: ignore[no-any-return]

    @property
    def mask(self) -> Tensor:
        """Bool patch mask, True = masked: (h, w) per sample, (N, h, w) per batch."""
        return self[1]  # type: ignore[no-any-return]

    def map_images(self, fn: Callable[[Tensor], Tensor]) -> Masked:
        """A ``Masked`` with ``fn`` applied to every image tensor (each view) and the same mask."""
        images = self.images
        return Masked([fn(v) for v in images] if isinstance(images, list) else fn(images), self.mask)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Masked:
        """Move images and mask to ``device``."""
        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Masked(self.map_images(move).images, move(self.mask))

    def __repr__(self) -> str:
        return f"Masked(images={_shape_text(self.images)}, mask={_shape_text(self.mask)})"


def _shape_text(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, list):
        return "[" + ", ".join(_shape_text(v) for v in value) + "]"
    return type(value).__name__


def stack_masked(items: Iterable[Masked], stack: Any = torch.stack) -> Masked:
    """Batch per-sample ``Masked`` items: images stacked (each view), masks into (N, h, w) bool."""
    items = list(items)
    first = items[0].images
    if isinstance(first, list):
        images: Tensor | list[Tensor] = [stack([m.images[v] for m in items]) for v in range(len(first))]
    else:
        images = stack([m.images for m in items])
    return Masked(images, torch.stack([m.mask.bool() for m in items]))


#: What loaders yield: images uint8 (N, C, H, W) (or a list of views, or a ``Masked``
#: batch when the pipeline has a mask generator) and labels long (N,).
Batch = tuple[Tensor | list[Tensor] | Masked, Tensor]

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


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a streaming dataset.

    Attributes:
        url: Where it is read from (a path, or any URL the dataset's reader opens).
        samples: How many samples it holds (known up front: the loaders plan epochs with it).

    """

    url: str
    samples: int


class BaseStreamDataset(BaseDataset):
    """Streaming dataset contract (still kind ``dataset``): samples read in order from shards.

    Large datasets live in shards (e.g. WebDataset tar files) that are read front to
    back, never by random index. Implement ``shards`` (with per-shard sample counts),
    ``read`` (raw samples of one shard, cheap to skip) and ``decode``; the engine does
    the rest exactly: each epoch's shard order from ``(seed, epoch)``, a split of the
    samples across ranks and DataLoader workers without duplicates, a seeded shuffle
    buffer of ``shuffle_buffer`` raw samples, and mid-epoch resumption by skipping
    (reading, not decoding) the samples already used.
    """

    #: Raw samples a training worker holds to shuffle within (0 = no shuffle buffer).
    shuffle_buffer: int = 1000

    def shards(self) -> Sequence[ShardInfo]:
        """The shards in their stored order, with sample counts."""
        raise NotImplementedError  # pragma: no cover - abstract

    def read(self, url: str, start: int, stop: int) -> Iterator[Any]:
        """Yield raw samples ``start``..``stop - 1`` of shard ``url`` (undecoded; cheap)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def decode(self, sample: Any) -> tuple[Tensor, int]:
        """A raw sample as (uint8 (C, H, W) image, label); raise ``SkipSample`` to drop it."""
        raise NotImplementedError  # pragma: no cover - abstract

    def __len__(self) -> int:
        return sum(s.samples for s in self.shards())

    @property
    def targets(self) -> Tensor:
        """Not available without reading every shard: streaming loaders never ask."""
        raise TypeError(f"{type(self).__name__} streams its samples; labels are known only when read")

    def load_image(self, index: int) -> Tensor:
        """Random access is not possible on a stream."""
        raise TypeError(f"{type(self).__name__} streams its samples; there is no random access by index")


class BaseTransform(nn.Module):
    """Transform contract (kind ``transform``, entry-point group ``pretrain.transforms``).

    ``forward(images, generator=None)`` takes uint8 (C, H, W) or a batch
    (N, C, H, W) and returns the same layout (``MultiView`` returns a list of
    views). Random transforms draw per-sample parameters from ``generator`` only
    (never the global RNG), which makes training resumable bit for bit. A plain
    ``nn.Module`` transform without a ``generator`` argument also works but uses
    the global RNG and, on batches, one random draw for the whole batch.

    After a MultiView, a transform is applied to each view; one that sets
    ``maps_over_views = False`` receives the list of views whole (a mask generator: one
    mask for all the views of a sample). Transforms after a mask generator receive
    the images of its ``Masked`` result, which keeps the mask.
    """

    component_kind: ClassVar[str] = "transform"
    #: Apply to each view of a multi-view sample (False: receive the list whole).
    maps_over_views: ClassVar[bool] = True

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
        self, images: Tensor | list[Tensor] | Masked, generator: torch.Generator | None = None
    ) -> Tensor | list[Tensor] | Masked:
        """Apply every transform to ``images`` (uint8 (C, H, W) or (N, C, H, W))."""
        for transform, with_gen in zip(self.transforms, self._with_generator, strict=True):
            kwargs = {"generator": generator} if with_gen else {}
            whole = not getattr(transform, "maps_over_views", True)
            if isinstance(images, Masked):
                # Later transforms see the images; the mask rides along unchanged.
                inner = images.images
                out = transform(inner, **kwargs) if whole else self._apply(transform, inner, kwargs)
                if isinstance(out, Masked):
                    raise PretrainError(
                        f"{type(transform).__name__} makes a second mask in the pipeline",
                        hint="Use one mask generator per pipeline, as its last transform.",
                    )
                images = Masked(out, images.mask)
            elif whole:
                images = transform(images, **kwargs)  # the whole sample (every view at once)
            else:
                images = self._apply(transform, images, kwargs)
        return images

    @staticmethod
    def _apply(transform: nn.Module, images: Tensor | list[Tensor], kwargs: dict[str, Any]) -> Any:
        """``transform`` on ``images``, or on each view of a list."""
        if isinstance(images, list):
            views = [transform(view, **kwargs) for view in images]
            if any(isinstance(v, list | Masked) for v in views):
                raise PretrainError(
                    f"{type(transform).__name__} returned views of views",
                    hint="Use at most one MultiView per pipeline.",
                )
            return views
        return transform(images, **kwargs)
