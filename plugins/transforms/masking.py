"""Masked-image-modelling transforms: block-wise and patch-grid mask generators, two-size crops.

Provenance: MMPretrain's ``BEiTMaskGenerator``, ``SimMIMMaskGenerator`` and
``RandomResizedCropAndInterpolationWithTwoPic``
(``mmpretrain/datasets/transforms/processing.py``), after BEiT's
``masking_generator.py`` (arXiv:2106.08254) and SimMIM's ``MaskGenerator``
(arXiv:2111.09886). A mask generator ends the pipeline: it returns
``Masked(images, mask)`` (``pretrain.components.Masked``), one bool mask over the
model's patch grid per sample (True = masked), shared by all views of a sample; the
loaders stack the masks into (N, h, w) and the model's ``loss`` receives them.

Differences (``docs/differences.md``): BEiT's blocks can reach the last row and column
(MMPretrain's port draws offsets with ``np.random.randint``, whose upper bound is
exclusive, so they never do; BEiT's original uses Python's inclusive ``randint``); a
configuration whose blocks cannot add up to ``num_masking_patches`` finishes with
single patches instead of looping for ever; SimMIM's count of masked blocks is
``ceil(blocks · ratio)`` without float error (``ceil(10 · 0.3)`` is 3, not 4).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from pydantic import Field
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode

from pretrain.components import BaseTransform, Masked

from ._common import Size, pair
from .geometric import RandomResizedCrop, resized_crops

__all__ = ["BEiTMaskGenerator", "RandomResizedCropAndInterpolationWithTwoPic", "SimMIMMaskGenerator"]

#: Block placements tried without progress before the rest is filled patch by patch.
MAX_STALLED_ROUNDS = 100


def _rng(generator: torch.Generator | None) -> random.Random:
    """A Python RNG seeded from ``generator`` (one draw per call, so batch streams stay aligned)."""
    where = generator.device if generator is not None else None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=where).item())
    return random.Random(seed)


def _batch_layout(images: Tensor | list[Tensor]) -> tuple[int | None, torch.device]:
    """(batch size, or None for one (C, H, W) sample) and the device of ``images``."""
    first = images[0] if isinstance(images, list) else images
    if first.dim() not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (N, C, H, W) images, got {tuple(first.shape)}")
    return (first.shape[0] if first.dim() == 4 else None), first.device


class _MaskGenerator(BaseTransform):
    """Shared plumbing: one mask per sample, whatever the views; ``Masked`` out."""

    #: The whole sample at once (one mask shared by every view of a sample).
    maps_over_views: ClassVar[bool] = False

    def sample(self, rng: random.Random) -> Tensor:
        """One bool mask over the patch grid."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, images: Any, generator: torch.Generator | None = None) -> Masked:
        """Images (or views) -> ``Masked(images, mask)``; mask bool (h, w) or (N, h, w)."""
        batch, device = _batch_layout(images)
        rng = _rng(generator)
        masks = [self.sample(rng) for _ in range(batch or 1)]
        mask = torch.stack(masks).to(device) if batch is not None else masks[0].to(device)
        return Masked(images, mask)


class BEiTMaskGenerator(_MaskGenerator):
    """Block-wise masking (BEiT): random rectangles until exactly ``num_masking_patches`` are masked.

    Each block covers a random area in [``min_num_patches``, ``max_num_patches``]
    patches (never more than still missing) with a log-uniform aspect ratio; blocks
    may overlap, only newly covered patches count.

    Args:
        input_size: Patch grid of the model, an int (square) or ``[height, width]``
            (14 for 224-pixel images and 16-pixel patches).
        num_masking_patches: Patches to mask in every sample.
        min_num_patches: Smallest block area, in patches.
        max_num_patches: Largest block area (default: ``num_masking_patches``).
        min_aspect: Smallest block aspect ratio (height / width).
        max_aspect: Largest block aspect ratio (default: ``1 / min_aspect``).

    """

    example_config: ClassVar[dict[str, Any]] = {"input_size": 4, "num_masking_patches": 6, "min_num_patches": 2}

    def __init__(
        self,
        *,
        input_size: Annotated[int, Field(gt=0)] | tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]],
        num_masking_patches: Annotated[int, Field(ge=0)],
        min_num_patches: Annotated[int, Field(gt=0)] = 4,
        max_num_patches: Annotated[int, Field(gt=0)] | None = None,
        min_aspect: Annotated[float, Field(gt=0)] = 0.3,
        max_aspect: Annotated[float, Field(gt=0)] | None = None,
    ) -> None:
        super().__init__()
        params = {"input_size": input_size, "num_masking_patches": num_masking_patches,
                  "min_num_patches": min_num_patches, "max_num_patches": max_num_patches,
                  "min_aspect": min_aspect, "max_aspect": max_aspect}
        for name, msg in self.spec_issues(params):
            raise ValueError(f"BEiTMaskGenerator: {name}: {msg}")
        self.height, self.width = pair(input_size)
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """At most every patch can be masked; the aspect range must be ordered."""
        h, w = pair(params["input_size"])
        count = params["num_masking_patches"]
        if count > h * w:
            yield "num_masking_patches", f"is {count}, but the {h}x{w} grid has only {h * w} patches"
        low, high = params.get("min_aspect", 0.3), params.get("max_aspect")
        if high is not None and high < low:
            yield "max_aspect", f"{high} is below min_aspect {low}"

    def _block(self, mask: Tensor, budget: int, rng: random.Random) -> int:
        """Try up to 10 rectangles; mask the first that adds 1..budget patches. Returns how many."""
        for _ in range(10):
            area = rng.uniform(self.min_num_patches, budget)
            aspect = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if 0 < w < self.width and 0 < h < self.height:
                top = rng.randint(0, self.height - h)  # inclusive, as BEiT's original
                left = rng.randint(0, self.width - w)
                window = mask[top:top + h, left:left + w]
                new = h * w - int(window.sum())
                if 0 < new <= budget:
                    window.fill_(True)
                    return new
        return 0

    def sample(self, rng: random.Random) -> Tensor:
        """One (height, width) bool mask with exactly ``num_masking_patches`` True."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count, stalled = 0, 0
        while count < self.num_masking_patches and stalled < MAX_STALLED_ROUNDS:
            budget = min(self.num_masking_patches - count, self.max_num_patches)
            delta = self._block(mask, budget, rng)
            count += delta
            stalled = 0 if delta else stalled + 1
        if count < self.num_masking_patches:  # no block fits any more: finish patch by patch
            free = (~mask).flatten().nonzero().flatten().tolist()
            for index in rng.sample(free, self.num_masking_patches - count):
                mask.view(-1)[index] = True
        return mask

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return (f"input_size=({self.height}, {self.width}), num_masking_patches={self.num_masking_patches}, "
                f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches}")


class SimMIMMaskGenerator(_MaskGenerator):
    """Random square blocks (SimMIM): ``ceil(blocks · mask_ratio)`` of the ``mask_patch_size`` blocks.

    The mask is returned at the model's patch resolution, (input_size /
    model_patch_size)² (48 x 48 for SimMIM's 192-pixel, 4-pixel-patch Swin), each
    masked block covering (mask_patch_size / model_patch_size)² patches.

    Args:
        input_size: Image size in pixels (square).
        mask_patch_size: Side of a masked block in pixels; divides ``input_size``.
        model_patch_size: The model's patch size in pixels; divides ``mask_patch_size``.
        mask_ratio: Fraction of the blocks to mask.

    """

    example_config: ClassVar[dict[str, Any]] = {"input_size": 16, "mask_patch_size": 8, "model_patch_size": 4}

    def __init__(
        self,
        *,
        input_size: Annotated[int, Field(gt=0)] = 192,
        mask_patch_size: Annotated[int, Field(gt=0)] = 32,
        model_patch_size: Annotated[int, Field(gt=0)] = 4,
        mask_ratio: Annotated[float, Field(ge=0, le=1)] = 0.6,
    ) -> None:
        super().__init__()
        params = {"input_size": input_size, "mask_patch_size": mask_patch_size, "model_patch_size": model_patch_size}
        for name, msg in self.spec_issues(params):
            raise ValueError(f"SimMIMMaskGenerator: {name}: {msg}")
        self.input_size, self.mask_patch_size, self.model_patch_size = input_size, mask_patch_size, model_patch_size
        self.mask_ratio = mask_ratio
        self.rand_size = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.token_count = self.rand_size**2
        # 1e-9 absorbs float error: 10 * 0.3 = 3.0000000000000004 must give 3 blocks.
        self.mask_count = min(self.token_count, math.ceil(self.token_count * mask_ratio - 1e-9))

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """Blocks tile the image, patches tile the blocks."""
        size, block, patch = (params.get("input_size", 192), params.get("mask_patch_size", 32),
                              params.get("model_patch_size", 4))
        if size % block:
            yield "mask_patch_size", f"{block} does not divide input_size {size}"
        if block % patch:
            yield "model_patch_size", f"{patch} does not divide mask_patch_size {block}"

    def sample(self, rng: random.Random) -> Tensor:
        """One (input_size / model_patch_size)² bool mask."""
        blocks = torch.zeros(self.token_count, dtype=torch.bool)
        blocks[rng.sample(range(self.token_count), self.mask_count)] = True
        grid = blocks.view(self.rand_size, self.rand_size)
        return grid.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return (f"input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
                f"model_patch_size={self.model_patch_size}, mask_ratio={self.mask_ratio}")


_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
Interpolation = Literal["bilinear", "bicubic", "lanczos"]


def _resize_crops(images: Tensor, boxes: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Crop ``boxes`` (N, 4: x1, y1, x2, y2) out of uint8 (N, C, H, W) and resize each to ``size``."""
    if mode == "bilinear":  # RandomResizedCrop's resampling (per image on the CPU, batched elsewhere)
        return resized_crops(images, boxes, size)
    crops = []
    for image, (x1, y1, x2, y2) in zip(images, boxes.long().tolist(), strict=True):
        crop = image[:, y1:y2, x1:x2]
        if mode == "lanczos":  # torchvision has no tensor Lanczos: Pillow's, on the CPU
            hwc = crop.permute(1, 2, 0).cpu().numpy()
            pil = Image.fromarray(hwc[..., 0] if crop.shape[0] == 1 else hwc)
            array = torch.from_numpy(np.asarray(pil.resize((size[1], size[0]), Image.Resampling.LANCZOS)).copy())
            crop = (array[None] if array.dim() == 2 else array.permute(2, 0, 1)).to(images.device)
        else:
            crop = F.resize(crop, list(size), interpolation=_INTERPOLATION[mode], antialias=True)
        crops.append(crop)
    return torch.stack(crops)


class RandomResizedCropAndInterpolationWithTwoPic(BaseTransform):
    """One random crop resized twice: the model's image and the tokenizer's (BEiT's two pictures).

    The crop box is sampled as in ``RandomResizedCrop``; with ``second_size`` the
    result is a list of two views ``[image (size), target image (second_size)]`` of
    the same crop, otherwise the single image.

    Args:
        size: Size of the first image, an int (square) or ``[height, width]``.
        second_size: Size of the second image (none: a single image).
        scale: Range of the crop's area as a fraction of the image's area.
        ratio: Range of the crop's aspect ratio (width / height), log-uniform.
        interpolation: Resampling of the first image (``random``: bilinear or bicubic per image).
        second_interpolation: Resampling of the second image.

    """

    example_config: ClassVar[dict[str, Any]] = {"size": 8, "second_size": 4}

    def __init__(
        self,
        *,
        size: Size,
        second_size: Size | None = None,
        scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.08, 1.0),
        ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (3 / 4, 4 / 3),
        interpolation: Interpolation | Literal["random"] = "bilinear",
        second_interpolation: Interpolation = "lanczos",
    ) -> None:
        super().__init__()
        self.crop = RandomResizedCrop(size=size, scale=scale, ratio=ratio)
        self.size = pair(size)
        self.second_size = None if second_size is None else pair(second_size)
        self.interpolation, self.second_interpolation = interpolation, second_interpolation

    @classmethod
    def spec_issues(cls, params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        """``scale`` and ``ratio`` must be ``[min, max]``."""
        return RandomResizedCrop.spec_issues(dict(params))

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor | list[Tensor]:
        """uint8 (C, H, W) / (N, C, H, W) -> the image, or ``[image, target image]``."""
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        n, _, height, width = batch.shape
        boxes = self.crop.sample_boxes(n, height, width, generator, batch.device)
        mode = self.interpolation
        if mode == "random":  # one draw per image, always made, so streams stay aligned
            pick = torch.rand(n, generator=generator, device=generator.device if generator else None) < 0.5
            first = torch.empty(n, batch.shape[1], *self.size, dtype=torch.uint8, device=batch.device)
            for value, name in ((True, "bilinear"), (False, "bicubic")):
                chosen = (pick == value).to(batch.device)
                if chosen.any():
                    first[chosen] = _resize_crops(batch[chosen], boxes[chosen], self.size, name)
        else:
            first = _resize_crops(batch, boxes, self.size, mode)
        outs = [first]
        if self.second_size is not None:
            outs.append(_resize_crops(batch, boxes, self.second_size, self.second_interpolation))
        outs = [o[0] for o in outs] if single else outs
        return outs if self.second_size is not None else outs[0]

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return (f"size={self.size}, second_size={self.second_size}, interpolation={self.interpolation}, "
                f"second_interpolation={self.second_interpolation}")
