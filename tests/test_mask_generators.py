"""Mask generators (BEiT block-wise, SimMIM) and BEiT's two-picture crop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrain.assembly.assemble import build_from_spec
from pretrain.components import Masked, Pipeline
from pretrain_builtins.transforms.masking import (
    BEiTMaskGenerator,
    RandomResizedCropAndInterpolationWithTwoPic,
    SimMIMMaskGenerator,
)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 14), w=st.integers(1, 14), frac=st.floats(0, 1), low=st.integers(1, 20),
       seed=st.integers(0, 2**31))
def test_beit_masks_exactly_the_requested_number(h: int, w: int, frac: float, low: int, seed: int) -> None:
    count = round(frac * h * w)
    gen = BEiTMaskGenerator(input_size=(h, w), num_masking_patches=count, min_num_patches=low)
    out = gen(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), generator=torch.Generator().manual_seed(seed))
    assert isinstance(out, Masked) and out.mask.shape == (3, h, w) and out.mask.dtype == torch.bool
    assert out.mask.flatten(1).sum(1).tolist() == [count] * 3


def test_beit_blocks_reach_every_row_and_column_and_masks_vary() -> None:
    gen = BEiTMaskGenerator(input_size=14, num_masking_patches=75, min_num_patches=16)
    masks = gen(torch.zeros(200, 3, 2, 2, dtype=torch.uint8), generator=torch.Generator().manual_seed(0)).mask
    assert masks.shape == (200, 14, 14)
    coverage = masks.float().mean(0)
    assert bool((coverage[-1] > 0).any()) and bool((coverage[:, -1] > 0).any())  # MMPretrain's port never does
    assert len({m.flatten().nonzero().flatten().tolist().__repr__() for m in masks}) > 150
    # A sample's mask is a union of rectangles: most masked patches have a masked neighbour.
    padded = torch.nn.functional.pad(masks.float(), (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    assert (neighbours[masks] > 0).float().mean() > 0.95


def test_beit_single_sample_and_generator_determinism() -> None:
    gen = BEiTMaskGenerator(input_size=(4, 6), num_masking_patches=9, min_num_patches=2)
    image = torch.zeros(1, 8, 12, dtype=torch.uint8)
    a = gen(image, generator=torch.Generator().manual_seed(1))
    b = gen(image, generator=torch.Generator().manual_seed(1))
    assert a.mask.shape == (4, 6) and torch.equal(a.mask, b.mask) and a.images is image
    with pytest.raises(ValueError, match="only 4 patches"):
        BEiTMaskGenerator(input_size=2, num_masking_patches=5)


@settings(max_examples=40, deadline=None)
@given(blocks=st.integers(1, 8), scale=st.integers(1, 4), ratio=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_simmim_masks_whole_blocks_at_patch_resolution(blocks: int, scale: int, ratio: float, seed: int) -> None:
    patch = 2
    gen = SimMIMMaskGenerator(input_size=blocks * scale * patch, mask_patch_size=scale * patch,
                              model_patch_size=patch, mask_ratio=ratio)
    out = gen(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), generator=torch.Generator().manual_seed(seed))
    side = blocks * scale
    assert out.mask.shape == (2, side, side)
    want = math.ceil(round(blocks * blocks * ratio, 9))
    assert out.mask.flatten(1).sum(1).tolist() == [want * scale * scale] * 2
    coarse = out.mask.view(2, blocks, scale, blocks, scale)
    assert bool((coarse.all(dim=(2, 4)) == coarse.any(dim=(2, 4))).all())  # blocks all-or-nothing


def test_simmim_counts_without_float_error_and_checks_sizes() -> None:
    assert SimMIMMaskGenerator(input_size=192, mask_patch_size=32, mask_ratio=0.6).mask_count == 22  # ceil(21.6)
    assert SimMIMMaskGenerator(input_size=160, mask_patch_size=32, mask_ratio=0.36).mask_count == 9  # 25*.36=9.0000x
    with pytest.raises(ValueError, match="does not divide"):
        SimMIMMaskGenerator(input_size=100, mask_patch_size=32)


def test_two_pic_crop_gives_the_same_crop_at_two_sizes_then_one_mask() -> None:
    # A horizontal gradient: both pictures of one crop must cover the same columns.
    row = torch.arange(64, dtype=torch.uint8).repeat(64, 1) * 4
    images = row.expand(3, 1, 64, 64).clone()
    crop = RandomResizedCropAndInterpolationWithTwoPic(size=16, second_size=8, second_interpolation="bicubic")
    pipeline = Pipeline([crop, BEiTMaskGenerator(input_size=2, num_masking_patches=2, min_num_patches=1)])
    out = pipeline(images, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, Masked) and [v.shape for v in out.images] == [(3, 1, 16, 16), (3, 1, 8, 8)]
    big, small = (v.float().mean(dim=(1, 2, 3)) for v in out.images)
    assert torch.allclose(big, small, atol=6)  # same crop, resized twice
    assert out.mask.shape == (3, 2, 2)
    lanczos = build_from_spec("transform", {"type": "RandomResizedCropAndInterpolationWithTwoPic", "size": 8,
                                            "second_size": 4, "interpolation": "random"})
    views = lanczos(torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8), generator=torch.Generator())
    assert [v.shape for v in views] == [(3, 8, 8), (3, 4, 4)] and views[1].dtype == torch.uint8
    single = RandomResizedCropAndInterpolationWithTwoPic(size=6)(images, generator=torch.Generator())
    assert isinstance(single, torch.Tensor) and single.shape == (3, 1, 6, 6)
