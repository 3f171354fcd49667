"""Helpers shared by the built-in transforms: batching and per-sample random draws.

Every built-in transform works on a batch (N, C, H, W); a single image (C, H, W)
is treated as a batch of one, so the DataLoader path (one sample at a time) and the
in-memory path (whole batches on the device) run the same code and draw their
random parameters the same way. Random numbers come only from the ``generator``
argument, drawn on the generator's device and then moved to the images' device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

__all__ = [
    "Probability",
    "Size",
    "as_batch",
    "bernoulli",
    "pair",
    "uniform",
    "value_range",
]

#: A probability in [0, 1].
Probability = Annotated[float, Field(ge=0, le=1)]
#: An output size: one int (square) or ``[height, width]``.
Size = Annotated[int, Field(gt=0)] | tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]


def pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``32`` -> ``(32, 32)``; ``(h, w)`` unchanged."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def value_range(
    value: float | tuple[float, float] | list[float], center: float, name: str,
    bound: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Torchvision's jitter convention: ``x`` -> ``[center - x, center + x]``, a pair as is."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
        lo, hi = center - value, center + value
        if bound is not None:
            lo = max(lo, bound[0])
    else:
        lo, hi = (float(v) for v in value)
    if lo > hi or (bound is not None and not bound[0] <= lo <= hi <= bound[1]):
        raise ValueError(f"{name} range must be ordered and within {bound}, got ({lo}, {hi})")
    return float(lo), float(hi)


def as_batch(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorate ``forward(self, images (N, C, H, W), generator)`` to accept (C, H, W) too."""

    def wrapper(self: object, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.ndim == 3:
            return fn(self, images.unsqueeze(0), generator).squeeze(0)
        if images.ndim != 4:
            raise ValueError(f"expected (C, H, W) or (N, C, H, W) images, got {tuple(images.shape)}")
        return fn(self, images, generator)

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


def uniform(
    shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """Float32 uniform draws in ``[low, high)`` on ``device``."""
    where = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=where)
    if u.device != device:
        u = u.to(device)
    # u * 1.0 + 0.0 is u, bit for bit: skip two ops (per image, on the DataLoader path).
    return u if (low, high) == (0.0, 1.0) else u * (high - low) + low


def bernoulli(n: int, prob: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Bool (n,): each True with probability ``prob`` (always drawn, so streams stay aligned)."""
    return uniform((n,), 0.0, 1.0, generator, device) < prob
