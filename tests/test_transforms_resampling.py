"""The DataLoader fast path of the geometric transforms and of decoding.

``RandomResizedCrop`` resamples per image with the antialiased uint8 resize on the CPU
and with one batched ``roi_align`` elsewhere: the two must agree within a few grey
levels on real images, the CPU must really take the fast path, and the random boxes
(the RNG stream) must be the ones the batched code always drew.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import Tensor

from pretrain_builtins.datasets.digits import Digits
from pretrain_builtins.datasets.image_folder import decode_image
from pretrain_builtins.transforms import geometric
from pretrain_builtins.transforms.geometric import RandomFlip, RandomResizedCrop, resampler, resized_crops
from pretrain_builtins.transforms.masking import RandomResizedCropAndInterpolationWithTwoPic

CPU = torch.device("cpu")


def _photo_like(height: int = 180, width: int = 240) -> Tensor:
    """A JPEG round trip of an image with smooth shading and hard edges (uint8 (3, H, W))."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, ((x // 16 + y // 16) % 2) * 200 + 30], -1)
    rgb[40:120, 60:90] = (250, 20, 20)  # a block with sharp borders
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    buf.seek(0)
    return decode_image(buf, 3)


def _differences(images: list[Tensor], size: int, shift: int = 0, trials: int = 60) -> Tensor:
    """|resize - roi_align| over ``trials`` random crops (resize's box moved by ``shift`` px)."""
    rrc = RandomResizedCrop(size=size)
    gen = torch.Generator().manual_seed(0)
    out = []
    for t in range(trials):
        image = images[t % len(images)][None]
        boxes = rrc.sample_boxes(1, image.shape[-2], image.shape[-1], gen, CPU)
        moved = boxes.clone()
        if shift:  # a control: the same box moved right (within the image) must stand out
            moved[:, [0, 2]] += min(shift, image.shape[-1] - int(boxes[0, 2]))
        fast = resized_crops(image, moved, rrc.size, kernel="resize")
        ref = resized_crops(image, boxes, rrc.size, kernel="roi_align")
        out.append((fast.int() - ref.int()).abs().flatten().float())
    return torch.cat(out)


@pytest.mark.parametrize("case", ["digits", "jpeg"])
def test_resize_and_roi_align_agree_within_a_few_grey_levels(case: str) -> None:
    if case == "digits":
        images = list(Digits(split="val").load_all()[0][:60])  # uint8 (1, 32, 32), sharp strokes
        size = 32
    else:
        images, size = [_photo_like()], 96
    diff = _differences(images, size)
    # Measured: digits mean 0.37, JPEG photographs 0.24-0.77; 99% of pixels within 7.
    assert float(diff.mean()) < 1.0 and float(diff.quantile(0.99)) <= 10, (diff.mean(), diff.quantile(0.99))
    # The tolerance tells a wrong box apart: the same crops two pixels off fail it.
    moved = _differences(images, size, shift=2)
    assert float(moved.mean()) > 2 * float(diff.mean()) + 0.5


def test_the_cpu_takes_the_resize_path_and_accelerators_roi_align(monkeypatch: pytest.MonkeyPatch) -> None:
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    assert resampler(image[None]) == "resize"
    assert resampler(torch.empty(2, 3, 8, 8, dtype=torch.uint8, device="meta")) == "roi_align"

    def no_roi_align(*args: object, **kwargs: object) -> Tensor:
        raise AssertionError("roi_align ran on the CPU")

    monkeypatch.setattr(geometric, "roi_align", no_roi_align)
    gen = torch.Generator().manual_seed(0)
    assert RandomResizedCrop(size=16)(image, generator=gen).shape == (3, 16, 16)  # one image
    assert RandomResizedCrop(size=16)(image.expand(4, -1, -1, -1), generator=gen).shape == (4, 3, 16, 16)
    two_pic = RandomResizedCropAndInterpolationWithTwoPic(size=16, second_size=8, second_interpolation="bicubic")
    assert [v.shape for v in two_pic(image, generator=gen)] == [(3, 16, 16), (3, 8, 8)]
    with pytest.raises(AssertionError, match="roi_align ran"):  # the forced kernel is really the other one
        resized_crops(image[None], torch.tensor([[0.0, 0.0, 20.0, 20.0]]), (8, 8), kernel="roi_align")


def test_resize_path_crops_the_box_exactly() -> None:
    """A box the output's size is copied pixel for pixel (float input rounds like roi_align's path)."""
    images = torch.randint(0, 256, (3, 1, 20, 30), dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 3.0, 15.0, 13.0], [20.0, 10.0, 30.0, 20.0]])
    out = resized_crops(images, boxes, (10, 10))
    expect = torch.stack([images[0, :, :10, :10], images[1, :, 3:13, 5:15], images[2, :, 10:20, 20:30]])
    assert out.dtype == torch.uint8 and torch.equal(out, expect)
    assert torch.equal(resized_crops(images.float() + 0.4, boxes, (10, 10)), expect)


def test_boxes_and_rng_stream_are_unchanged() -> None:
    """Pinned from the batched implementation (before the per-image path): same draws, same boxes."""
    rrc = RandomResizedCrop(size=8)
    singles = [rrc.sample_boxes(1, 280, 350, torch.Generator().manual_seed(s), CPU)[0].int().tolist()
               for s in range(3)]
    assert singles == [[119, 28, 339, 267], [12, 5, 299, 270], [44, 0, 300, 247]]
    batch = rrc.sample_boxes(3, 40, 30, torch.Generator().manual_seed(7), CPU).int().tolist()
    assert batch == [[0, 7, 29, 31], [1, 7, 26, 35], [1, 2, 30, 39]]
    fallback = RandomResizedCrop(size=8, ratio=(3.0, 4.0)).sample_boxes(1, 400, 20, torch.Generator().manual_seed(1), CPU)
    assert fallback.int().tolist() == [[0, 196, 20, 203]]  # no try fits: the centred crop


@pytest.mark.parametrize(("scale", "ratio"), [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (0.2, 5.0)),
                                              ((0.5, 1.0), (2.0, 3.0))])
def test_one_image_box_placement_is_bit_identical_to_the_batched_one(scale: tuple, ratio: tuple) -> None:
    rrc = RandomResizedCrop(size=8, scale=scale, ratio=ratio)
    for height, width in [(1, 1), (3, 400), (400, 3), (17, 23), (280, 350), (1000, 999)]:
        for seed in range(60):
            draws = rrc._draws(1, height, width, torch.Generator().manual_seed(seed), CPU)
            one, batched = rrc._place_one(height, width, *draws), rrc._place(height, width, *draws)
            assert torch.equal(one, batched), (height, width, seed, one, batched)


@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_cpu_flip_matches_the_batched_rule(direction: str) -> None:
    images = torch.randint(0, 256, (16, 3, 5, 7), dtype=torch.uint8)
    dim = -1 if direction == "horizontal" else -2
    for prob, seed in [(0.5, 0), (0.5, 1), (0.0, 0), (1.0, 0)]:
        flip = torch.rand(16, generator=torch.Generator().manual_seed(seed)) < prob
        expect = torch.where(flip[:, None, None, None], images.flip(dim), images)
        out = RandomFlip(prob=prob, direction=direction)(images, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(out, expect)
        single = RandomFlip(prob=prob, direction=direction)(images[0], generator=torch.Generator().manual_seed(seed))
        assert torch.equal(single, images[0].flip(dim) if bool(flip[0]) else images[0])


def test_decode_image_is_planar_contiguous_and_writable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (21, 13, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    rgba = np.concatenate([rgb, np.full((21, 13, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    for name, channels in [("a.png", 3), ("gray.png", 1), ("gray.png", 3), ("rgba.png", 3), ("a.png", 1),
                           ("rot.jpg", 3)]:
        with Image.open(tmp_path / name) as img:  # Pillow's reference: orientation, then the mode
            ref = np.asarray(ImageOps.exif_transpose(img).convert("L" if channels == 1 else "RGB"))
        out = decode_image(tmp_path / name, channels)
        assert out.is_contiguous() and out.shape == (channels, *ref.shape[:2]), name
        assert torch.equal(out, torch.from_numpy(ref.reshape(*ref.shape[:2], channels).copy()).permute(2, 0, 1))
        out[0, 0, 0] = 7  # a writable, owned buffer
    assert decode_image(tmp_path / "rot.jpg", 3).shape == (3, 13, 21)  # the orientation applied
    # The extension's format is tried first, but a file whose extension lies still decodes.
    (tmp_path / "png.jpg").write_bytes((tmp_path / "a.png").read_bytes())
    expect = decode_image(tmp_path / "a.png", 3)
    assert torch.equal(decode_image(tmp_path / "png.jpg", 3), expect)
    stream = io.BytesIO((tmp_path / "a.png").read_bytes())
    assert torch.equal(decode_image(stream, 3, extension=".jpg"), expect)

