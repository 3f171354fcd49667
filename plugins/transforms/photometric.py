"""Photometric transforms: colour jitter, grayscale, blur, solarize, random erasing.

Batched with independent random parameters per image (see ``geometric.py``). The
colour formulas are torchvision's (``transforms.v2.functional``): brightness
scales, contrast and saturation blend with the grey mean / grey image (ITU-R
601-2 luma), hue rotates in HSV. Arithmetic is done in float and rounded once at
the end (torchvision truncates to uint8 after every step).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

import torch
import torchvision.transforms.v2.functional as F
from pydantic import Field
from torch import Tensor

from pretrain.components import BaseTransform

from ._common import Probability, as_batch, bernoulli, uniform, value_range

__all__ = ["ColorJitter", "GaussianBlur", "RandomErasing", "RandomGrayscale", "Solarize"]

NonNeg = Annotated[float, Field(ge=0)]
Jitter = NonNeg | tuple[NonNeg, NonNeg]


def _gray(images: Tensor) -> Tensor:
    """Luma (N, 1, H, W) of float RGB (N, 3, H, W); gray images are returned as they are."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _rgb_to_hsv(rgb: Tensor) -> Tensor:
    """Float RGB in [0, 1] (N, 3, H, W) -> HSV in [0, 1] (torchvision's formula)."""
    r, g, b = rgb.unbind(1)
    maxc, minc = rgb.amax(1), rgb.amin(1)
    equal = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(equal, ones, maxc)
    div = torch.where(equal, ones, chroma)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV in [0, 1] (N, 3, H, W) -> float RGB in [0, 1]."""
    h, s, v = hsv.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    sector = i.to(torch.int64) % 6  # (N, H, W)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    table = torch.stack([  # (N, 3, 6, H, W): channel value for each sector
        torch.stack((v, q, p, p, t, v), 1),
        torch.stack((t, v, v, q, p, p), 1),
        torch.stack((p, p, t, v, v, q), 1),
    ], 1)
    index = sector[:, None, None].expand(-1, 3, 1, -1, -1)
    return table.gather(2, index).squeeze(2)


class ColorJitter(BaseTransform):
    """Randomly change brightness, contrast, saturation and hue, in a random order.

    A float ``x`` means a factor in ``[max(0, 1 - x), 1 + x]`` (hue: a shift in
    ``[-x, x]``); a pair is the range itself. 0 disables that adjustment. The
    order of the four adjustments is drawn per batch (per image on the DataLoader path).

    Args:
        brightness: Brightness factor range.
        contrast: Contrast factor range.
        saturation: Saturation factor range.
        hue: Hue shift range, within [-0.5, 0.5].
        prob: Probability of jittering an image at all (MMPretrain's
            ``RandomApply([ColorJitter], p)``).

    """

    def __init__(
        self, *, brightness: Jitter = 0.0, contrast: Jitter = 0.0, saturation: Jitter = 0.0,
        hue: Annotated[float, Field(ge=0, le=0.5)] | tuple[float, float] = 0.0,
        prob: Probability = 1.0,
    ) -> None:
        super().__init__()
        self.brightness = value_range(brightness, 1.0, "brightness", (0.0, math.inf))
        self.contrast = value_range(contrast, 1.0, "contrast", (0.0, math.inf))
        self.saturation = value_range(saturation, 1.0, "saturation", (0.0, math.inf))
        self.hue = value_range(hue, 0.0, "hue", (-0.5, 0.5))
        self.prob = prob

    @classmethod
    def spec_issues(cls, params: dict[str, object]) -> list[tuple[str, str]]:
        """Ranges must be ordered (hue within [-0.5, 0.5])."""
        issues = []
        for name, center, bound in (("brightness", 1.0, (0.0, math.inf)),
                                    ("contrast", 1.0, (0.0, math.inf)),
                                    ("saturation", 1.0, (0.0, math.inf)),
                                    ("hue", 0.0, (-0.5, 0.5))):
            try:
                value_range(params[name], center, name, bound)  # type: ignore[arg-type]
            except (KeyError, ValueError) as exc:
                issues.append((name, str(exc)))
        return issues

    @as_batch
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Jitter (N, C, H, W) uint8; hue and saturation leave gray images unchanged."""
        n, device = images.shape[0], images.device
        apply = bernoulli(n, self.prob, generator, device)
        order = uniform((4,), 0.0, 1.0, generator, device).argsort().tolist()
        x = images.float()
        color = images.shape[1] == 3
        for op in order:
            if op == 0 and self.brightness != (1.0, 1.0):
                f = uniform((n, 1, 1, 1), *self.brightness, generator, device)
                x = (x * f).clamp_(0, 255)
            elif op == 1 and self.contrast != (1.0, 1.0):
                f = uniform((n, 1, 1, 1), *self.contrast, generator, device)
                mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
                x = (x * f + mean * (1 - f)).clamp_(0, 255)
            elif op == 2 and self.saturation != (1.0, 1.0) and color:
                f = uniform((n, 1, 1, 1), *self.saturation, generator, device)
                x = (x * f + _gray(x) * (1 - f)).clamp_(0, 255)
            elif op == 3 and self.hue != (0.0, 0.0) and color:
                shift = uniform((n, 1, 1), *self.hue, generator, device)
                hsv = _rgb_to_hsv(x / 255.0)
                hsv = torch.stack([torch.remainder(hsv[:, 0] + shift, 1.0), hsv[:, 1], hsv[:, 2]], 1)
                x = _hsv_to_rgb(hsv) * 255.0
        out = x.round_().clamp_(0, 255).to(torch.uint8)
        return torch.where(apply[:, None, None, None], out, images)

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return (f"brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue}, prob={self.prob}")


class RandomGrayscale(BaseTransform):
    """Turn each RGB image gray (kept as 3 channels) with probability ``prob``.

    Args:
        prob: Probability of converting an image.

    """

    def __init__(self, *, prob: Probability = 0.1) -> None:
        super().__init__()
        self.prob = prob

    @as_batch
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Gray out a random subset of (N, C, H, W)."""
        apply = bernoulli(images.shape[0], self.prob, generator, images.device)
        if images.shape[1] == 1:
            return images
        gray = F.rgb_to_grayscale(images, num_output_channels=3)
        return torch.where(apply[:, None, None, None], gray, images)


class GaussianBlur(BaseTransform):
    """Blur each image with a Gaussian of random ``sigma`` (SimCLR/BYOL augmentation).

    Args:
        kernel_size: Odd kernel width in pixels.
        sigma: Range of the standard deviation, sampled uniformly per image.
        prob: Probability of blurring an image.

    """

    #: Config the conformance kit (`pretrain.testing`) builds this component from.
    example_config: ClassVar[dict[str, Any]] = {"kernel_size": 3}

    def __init__(
        self, *, kernel_size: Annotated[int, Field(gt=0)],
        sigma: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.1, 2.0),
        prob: Probability = 1.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or sigma[0] > sigma[1]:
            raise ValueError(f"kernel_size must be odd and sigma (min, max); got {kernel_size}, {sigma}")
        self.kernel_size, self.sigma, self.prob = kernel_size, (float(sigma[0]), float(sigma[1])), prob

    @classmethod
    def spec_issues(cls, params: dict[str, object]) -> list[tuple[str, str]]:
        """``kernel_size`` must be odd; ``sigma`` ordered."""
        issues = []
        if isinstance(params.get("kernel_size"), int) and params["kernel_size"] % 2 == 0:  # type: ignore[operator]
            issues.append(("kernel_size", "must be odd"))
        sigma = params.get("sigma")
        if isinstance(sigma, tuple) and sigma[0] > sigma[1]:
            issues.append(("sigma", f"must be [min, max], got {list(sigma)}"))
        return issues

    @as_batch
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Blur (N, C, H, W) with a per-image kernel (separable depthwise convolution)."""
        n, c, h, w = images.shape
        device = images.device
        apply = bernoulli(n, self.prob, generator, device)
        sigma = uniform((n, 1), *self.sigma, generator, device)
        half = self.kernel_size // 2
        xs = torch.arange(-half, half + 1, device=device, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (xs / sigma) ** 2)  # (N, K)
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, K)
        mode = "reflect" if half < min(h, w) else "replicate"
        x = torch.nn.functional.pad(images.float().reshape(1, n * c, h, w), [half] * 4, mode=mode)
        x = torch.nn.functional.conv2d(x, kernel[:, None, None, :], groups=n * c)  # along W
        x = torch.nn.functional.conv2d(x, kernel[:, None, :, None], groups=n * c)  # along H
        out = x.reshape(n, c, h, w).round_().clamp_(0, 255).to(torch.uint8)
        return torch.where(apply[:, None, None, None], out, images)


class Solarize(BaseTransform):
    """Invert the pixels at or above ``threshold``, per image with probability ``prob``.

    Args:
        threshold: Pixels with values >= threshold are inverted (255 - v).
        prob: Probability of solarizing an image.

    """

    def __init__(self, *, threshold: Annotated[int, Field(ge=0, le=256)] = 128,
                 prob: Probability = 0.5) -> None:
        super().__init__()
        self.threshold, self.prob = threshold, prob

    @as_batch
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Solarize a random subset of (N, C, H, W)."""
        apply = bernoulli(images.shape[0], self.prob, generator, images.device)
        solar = torch.where(images >= self.threshold, 255 - images, images)
        return torch.where(apply[:, None, None, None], solar, images)


class RandomErasing(BaseTransform):
    """Fill a random rectangle of each image with ``value`` (Zhong et al., 2017).

    The box is sampled as in torchvision (10 tries; no erasing if none fits).

    Args:
        prob: Probability of erasing in an image.
        scale: Range of the erased area as a fraction of the image's area.
        ratio: Range of the box's aspect ratio, sampled log-uniformly.
        value: Fill value (0..255).

    """

    max_attempts = 10

    def __init__(
        self, *, prob: Probability = 0.5,
        scale: tuple[Probability, Probability] = (0.02, 0.33),
        ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.3, 3.3),
        value: Annotated[int, Field(ge=0, le=255)] = 0,
    ) -> None:
        super().__init__()
        self.prob, self.value = prob, value
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    @as_batch
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Erase one box per selected image of (N, C, H, W)."""
        n, _, height, width = images.shape
        device = images.device
        apply = bernoulli(n, self.prob, generator, device)
        k = self.max_attempts
        area = height * width * uniform((n, k), *self.scale, generator, device)
        aspect = torch.exp(uniform((n, k), math.log(self.ratio[0]), math.log(self.ratio[1]),
                                   generator, device))
        h = torch.sqrt(area * aspect).round()
        w = torch.sqrt(area / aspect).round()
        valid = (h < height) & (w < width) & (h > 0) & (w > 0)
        first = valid.int().argmax(1, keepdim=True)
        h, w = h.gather(1, first), w.gather(1, first)  # (N, 1)
        top = (uniform((n, 1), 0.0, 1.0, generator, device) * (height - h + 1)).floor()
        left = (uniform((n, 1), 0.0, 1.0, generator, device) * (width - w + 1)).floor()
        rows = torch.arange(height, device=device)[None]  # (1, H)
        cols = torch.arange(width, device=device)[None]
        in_rows = (rows >= top) & (rows < top + h)  # (N, H)
        in_cols = (cols >= left) & (cols < left + w)  # (N, W)
        mask = in_rows[:, :, None] & in_cols[:, None, :] & (apply & valid.any(1))[:, None, None]
        return images.masked_fill(mask[:, None], self.value)
