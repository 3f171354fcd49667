"""Helpers of the masked-image-modelling algorithms (BEiT, MaskFeat, SimMIM): the masked batch."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from pretrain.components import Masked
from pretrain.errors import PretrainError

__all__ = ["masked_views", "patch_mask", "unmasked_views"]


def masked_views(inputs: Masked | Tensor | Sequence[Tensor], model: str, generator: str,
                 count: int = 1) -> tuple[list[Tensor], Tensor]:
    """The first ``count`` image views of a ``Masked`` batch and its bool mask (N, h, w).

    Raises:
        PretrainError: The batch carries no mask (no mask generator in the pipeline), or
            fewer views than the algorithm needs.

    """
    if not isinstance(inputs, Masked):
        raise PretrainError(
            f"{model} needs a mask with every batch, but the data pipeline produces plain images",
            hint=f"End the pipeline of [data.train] (and [data.val]) with a {generator}, e.g. "
            f'pipeline = [..., {{type = "{generator}", ...}}]; it draws one mask per image.',
        )
    views = [inputs.images] if isinstance(inputs.images, Tensor) else list(inputs.images)
    if len(views) < count:
        raise PretrainError(
            f"{model} needs {count} images per sample (its input and its tokenizer's) but got {len(views)}",
            hint="Put RandomResizedCropAndInterpolationWithTwoPic (with second_size) before the mask "
            "generator in the pipeline.",
        )
    return views[:count], inputs.mask.bool()


def unmasked_views(inputs: Masked | Tensor | Sequence[Tensor]) -> list[Tensor]:
    """The image views of a batch, mask or not (for feature extraction)."""
    images = inputs.images if isinstance(inputs, Masked) else inputs
    return [images] if isinstance(images, Tensor) else list(images)


def patch_mask(mask: Tensor, grid: tuple[int, int], model: str, generator: str) -> Tensor:
    """Check that ``mask`` (N, h, w) covers the patch ``grid``; returns it as (N, h·w) bool.

    Raises:
        PretrainError: The mask generator's grid is not the model's.

    """
    if tuple(mask.shape[1:]) != tuple(grid):
        raise PretrainError(
            f"{model}: the batch's masks are {tuple(mask.shape[1:])} but the images make a "
            f"{grid[0]}x{grid[1]} patch grid",
            hint=f"Set the {generator}'s input_size (and patch sizes) to the model's patch grid "
            f"({grid[0]}x{grid[1]}: image size / patch size).",
        )
    return mask.flatten(1)
