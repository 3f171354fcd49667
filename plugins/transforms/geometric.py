"""Geometric transforms: resize, crops, flips (torchvision transforms v2 kernels underneath).

Each transform takes uint8 images (C, H, W) or a batch (N, C, H, W). Random ones
draw independent parameters for every image of a batch from the ``generator``
they are given (see ``pretrain.engine.data``), so the in-memory path can augment a
whole batch on the GPU in one go. Parameter names follow torchvision (``size``,
``scale``, ``ratio``, ``padding``, ``fill``); MMPretrain's names differ, see
``docs/data.md``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import torch
import torchvision.transforms.v2.functional as F
from pydantic import Field
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms.v2 import InterpolationMode

from pretrain.components import BaseTransform

from ._common import Probability, Size, as_batch, bernoulli, pair, uniform

__all__ = ["CenterCrop", "RandomCrop", "RandomFlip", "RandomResizedCrop", "Resize"]

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def _gather_crops(images: Tensor, top: Tensor, left: Tensor, height: int, width: int) -> Tensor:
    """Crop a different (top, left) window of the same size out of every image."""
    n, c, h_in, w_in = images.shape
    device = images.device
    # Flat pixel index of each window's top-left corner plus the window's offsets.
    corner = top.to(device)[:, None] * w_in + left.to(device)[:, None]  # (N, 1)
    rows = torch.arange(height, device=device)[:, None] * w_in
    window = (rows + torch.arange(width, device=device)[None]).reshape(1, -1)  # (1, h*w)
    index = (corner + window)[:, None, :].expand(n, c, height * width)
    out = images.reshape(n, c, h_in * w_in).gather(2, index)  # (N, C, h*w)
    return out.reshape(n, c, height, width)


def _offsets(n: int, span: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform integers in ``[0, span]`` (N,), like ``torch.randint(0, span + 1)``."""
    u = uniform((n,), 0.0, 1.0, generator, device)
    return (u * (span + 1)).long().clamp_(max=span)


class Resize(BaseTransform):
    """Resize images (the same for every image of a batch).

    Args:
        size: An int resizes the shorter edge to ``size`` keeping the aspect ratio
            (torchvision's convention); ``[height, width]`` resizes to exactly that.
        interpolation: Resampling filter.
        antialias: Low-pass filter when downsampling (bilinear/bicubic).

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"size": 8}

    def __init__(
        self, *, size: Size, interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear",
        antialias: bool = True,
    ) -> None:
        super().__init__()
        self.size = [size] if isinstance(size, int) else list(pair(size))
        self.interpolation = interpolation
        self.antialias = antialias

    @as_batch
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Resize (N, C, H, W) -> (N, C, h, w)."""
        return F.resize(images, self.size, interpolation=_INTERPOLATION[self.interpolation],
                        antialias=self.antialias)

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return f"size={self.size}, interpolation={self.interpolation}"


class CenterCrop(BaseTransform):
    """Crop the centre of every image (padding with zeros when the image is smaller).

    Args:
        size: Output size, an int (square) or ``[height, width]``.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"size": 8}

    def __init__(self, *, size: Size) -> None:
        super().__init__()
        self.size = pair(size)

    @as_batch
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Crop (N, C, H, W) -> (N, C, h, w)."""
        return F.center_crop(images, list(self.size))

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return f"size={self.size}"


class RandomCrop(BaseTransform):
    """Crop a random window of every image, after optional padding (CIFAR-style augmentation).

    Args:
        size: Output size, an int (square) or ``[height, width]``.
        padding: Pixels added before cropping: one int for every side,
            ``[left/right, top/bottom]`` or ``[left, top, right, bottom]``.
        pad_if_needed: Pad images smaller than ``size`` instead of failing.
        fill: Pixel value of constant padding.
        padding_mode: How padded pixels are filled.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"size": 8}

    def __init__(
        self,
        *,
        size: Size,
        padding: Annotated[int, Field(ge=0)] | list[Annotated[int, Field(ge=0)]] = 0,
        pad_if_needed: bool = False,
        fill: Annotated[int, Field(ge=0, le=255)] = 0,
        padding_mode: Literal["constant", "edge", "reflect", "symmetric"] = "constant",
    ) -> None:
        super().__init__()
        if isinstance(padding, list) and len(padding) not in (2, 4):
            raise ValueError(f"padding must be an int or a list of 2 or 4 ints, got {padding}")
        self.size = pair(size)
        self.padding = [padding] if isinstance(padding, int) else list(padding)
        self.pad_if_needed = pad_if_needed
        self.fill = fill
        self.padding_mode = padding_mode

    @classmethod
    def spec_issues(cls, params: dict[str, object]) -> list[tuple[str, str]]:
        """``padding`` must hold 1, 2 or 4 values."""
        padding = params.get("padding")
        if isinstance(padding, list) and len(padding) not in (2, 4):
            return [("padding", f"give one int or a list of 2 or 4 ints, got {len(padding)}")]
        return []

    def _pad(self, images: Tensor, padding: list[int]) -> Tensor:
        if self.padding_mode == "constant":  # torch's kernel: much faster than v2's on uint8
            # torchvision order: [all], [left/right, top/bottom] or [left, top, right, bottom].
            left, top, right, bottom = (padding * 4 if len(padding) == 1 else padding * 2)[:4] \
                if len(padding) < 4 else padding
            return torch.nn.functional.pad(images, (left, right, top, bottom), value=self.fill)
        return F.pad(images, padding, fill=self.fill, padding_mode=self.padding_mode)

    @as_batch
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Pad then crop (N, C, H, W) -> (N, C, h, w), a different window per image."""
        h, w = self.size
        if any(self.padding):
            images = self._pad(images, self.padding)
        height, width = images.shape[-2:]
        if self.pad_if_needed and (height < h or width < w):
            dh, dw = max(h - height, 0), max(w - width, 0)
            images = self._pad(images, [dw, dh])
            height, width = images.shape[-2:]
        if height < h or width < w:
            raise ValueError(
                f"RandomCrop size {(h, w)} is larger than the (padded) image {(height, width)}; "
                "set pad_if_needed = true or resize first"
            )
        n = images.shape[0]
        top = _offsets(n, height - h, generator, images.device)
        left = _offsets(n, width - w, generator, images.device)
        return _gather_crops(images, top, left, h, w)

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return f"size={self.size}, padding={self.padding}, padding_mode={self.padding_mode}"


class RandomResizedCrop(BaseTransform):
    """Crop a random area and aspect ratio of every image, resized to ``size`` (Inception-style).

    The crop box is sampled as in torchvision (10 tries, then a centre crop).
    Resampling is bilinear with adaptive supersampling (``torchvision.ops.roi_align``),
    which averages several samples per output pixel when shrinking, so each image
    of a batch can have its own box in one kernel call.

    Args:
        size: Output size, an int (square) or ``[height, width]``.
        scale: Range of the crop's area as a fraction of the image's area.
        ratio: Range of the crop's aspect ratio (width / height), sampled log-uniformly.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"size": 8}

    max_attempts: ClassVar[int] = 10

    def __init__(
        self,
        *,
        size: Size,
        scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (
            0.08, 1.0),
        ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (
            3 / 4, 4 / 3),
    ) -> None:
        super().__init__()
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError(f"scale and ratio must be (min, max), got {scale} and {ratio}")
        self.size = pair(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    @classmethod
    def spec_issues(cls, params: dict[str, object]) -> list[tuple[str, str]]:
        """``scale`` and ``ratio`` must be ``[min, max]``."""
        issues = []
        for name in ("scale", "ratio"):
            value = params.get(name)
            if isinstance(value, tuple) and value[0] > value[1]:
                issues.append((name, f"must be [min, max], got {list(value)}"))
        return issues

    def sample_boxes(
        self, n: int, height: int, width: int, generator: torch.Generator | None,
        device: torch.device,
    ) -> Tensor:
        """Crop boxes float (N, 4) as ``(x1, y1, x2, y2)`` in pixels, one per image."""
        area = height * width
        k = self.max_attempts
        target = area * uniform((n, k), *self.scale, generator, device)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(uniform((n, k), log_lo, log_hi, generator, device))
        w = torch.sqrt(target * aspect).round()  # (N, K)
        h = torch.sqrt(target / aspect).round()
        valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = valid.int().argmax(dim=1, keepdim=True)  # first valid try per image
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        # Fallback when no try fits: the largest centred crop with a ratio in range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        ok = valid.any(dim=1)
        w = torch.where(ok, w, torch.full_like(w, fw))
        h = torch.where(ok, h, torch.full_like(h, fh))
        u_top = uniform((n,), 0.0, 1.0, generator, device)
        u_left = uniform((n,), 0.0, 1.0, generator, device)
        top = torch.where(ok, (u_top * (height - h + 1)).floor().clamp(max=height - h),
                          ((height - h) / 2).floor())
        left = torch.where(ok, (u_left * (width - w + 1)).floor().clamp(max=width - w),
                           ((width - w) / 2).floor())
        return torch.stack([left, top, left + w, top + h], dim=1)

    @as_batch
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Crop and resize (N, C, H, W) -> (N, C, *size), a different box per image."""
        n, _, height, width = images.shape
        boxes = self.sample_boxes(n, height, width, generator, images.device)
        index = torch.arange(n, device=images.device, dtype=boxes.dtype)[:, None]
        rois = torch.cat([index, boxes], dim=1)  # (N, 5): batch index, x1, y1, x2, y2
        out = roi_align(images.float(), rois, output_size=self.size, spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)  # (N, C, h, w)
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return f"size={self.size}, scale={self.scale}, ratio={self.ratio}"


class RandomFlip(BaseTransform):
    """Flip each image with probability ``prob``.

    Args:
        prob: Probability of flipping an image.
        direction: ``horizontal`` (left-right) or ``vertical`` (top-bottom).

    """

    def __init__(
        self, *, prob: Probability = 0.5,
        direction: Literal["horizontal", "vertical"] = "horizontal",
    ) -> None:
        super().__init__()
        self.prob = prob
        self.direction = direction

    @as_batch
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Flip a random subset of (N, C, H, W)."""
        flip = bernoulli(images.shape[0], self.prob, generator, images.device)
        flipped = images.flip(-1 if self.direction == "horizontal" else -2)
        return torch.where(flip[:, None, None, None], flipped, images)

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return f"prob={self.prob}, direction={self.direction}"
