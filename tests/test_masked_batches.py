"""Masks travel with the batch: ``Masked`` samples through pipelines, both loader paths and the trainer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from pretrain._data_contracts import stack_masked
from pretrain.components import BaseTransform, Masked, Pipeline
from pretrain.engine.data import build_loaders
from pretrain.engine.evaluate import to_memory_format as _to_memory_format
from pretrain.errors import PretrainError
from pretrain.spec.data_section import DataOptions, DataSection, DatasetSpec
from pretrain.testing._helpers import slice_batch, tensors
from pretrain_builtins.datasets.digits import Digits
from pretrain_builtins.transforms.geometric import RandomCrop, RandomFlip
from pretrain_builtins.transforms.multiview import MultiView

CPU = torch.device("cpu")


class CornerMask(BaseTransform):
    """Test double of a mask generator: one random patch of a 2x2 grid per sample."""

    maps_over_views = False

    def forward(self, images: Any, generator: torch.Generator | None = None) -> Masked:
        first = images[0] if isinstance(images, list) else images
        batch = first.shape[0] if first.dim() == 4 else 1
        where = torch.randint(0, 4, (batch,), generator=generator, device=generator.device if generator else None)
        mask = torch.nn.functional.one_hot(where.cpu(), 4).bool().view(batch, 2, 2)
        return Masked(images, mask if first.dim() == 4 else mask[0])


def section(pipeline: list[Any], **options: Any) -> DataSection:
    return DataSection(DataOptions(**options), DatasetSpec(Digits(split="val"), tuple(pipeline), "data.train"))


def batches(pipeline: list[Any], **options: Any) -> list[tuple[Any, Tensor]]:
    loaders = build_loaders(section(pipeline, batch_size=8, **options), device=CPU, distributed=False, rank=0,
                            world_size=1, seed=0, num_classes=None)
    assert loaders.train is not None
    return list(loaders.train.iter_from(0, 0))[:3]


def test_masked_is_a_named_pair_that_survives_tuple_rebuilding() -> None:
    m = Masked(torch.zeros(2, 1, 4, 4), torch.zeros(2, 2, 2, dtype=torch.bool))
    assert m.images.shape == (2, 1, 4, 4) and m.mask.shape == (2, 2, 2) and len(m) == 2
    again = Masked(iter(m))  # how tuple-rebuilding code (pin_memory, the kit) calls it
    assert isinstance(again, Masked) and again.images is m.images and again.mask is m.mask
    one = slice_batch(m, 1, 2)  # the conformance kit's per-sample slicing keeps the type
    assert isinstance(one, Masked) and one.images.shape == (1, 1, 4, 4) and one.mask.shape == (1, 2, 2)
    assert len(tensors(m)) == 2 and "mask=Tensor(2, 2, 2)" in repr(m)


def test_pipeline_keeps_the_mask_and_masks_every_view_alike() -> None:
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    out = Pipeline([CornerMask(), RandomFlip(prob=1.0)])(images, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, Masked) and torch.equal(out.images, images.flip(-1))
    assert out.mask.shape == (4, 2, 2) and out.mask.sum().item() == 4
    views = Pipeline([MultiView(num_views=2, pipeline=[RandomCrop(size=6)]), CornerMask(), RandomFlip()])(
        images, generator=torch.Generator().manual_seed(0))
    assert isinstance(views, Masked) and isinstance(views.images, list) and len(views.images) == 2
    assert views.mask.shape == (4, 2, 2)  # one mask per sample, shared by its views
    with pytest.raises(PretrainError, match="second mask"):
        Pipeline([CornerMask(), CornerMask()])(images, generator=torch.Generator())


@pytest.mark.parametrize("in_memory", [True, False])
def test_loaders_stack_masks_into_bool_batches(in_memory: bool) -> None:
    for inputs, labels in batches([RandomCrop(size=8, padding=1), CornerMask()], in_memory=in_memory):
        assert isinstance(inputs, Masked)
        assert inputs.images.shape == (8, 1, 8, 8) and inputs.images.dtype == torch.uint8
        assert inputs.mask.shape == (8, 2, 2) and inputs.mask.dtype == torch.bool
        assert inputs.mask.flatten(1).sum(1).tolist() == [1] * 8 and labels.shape == (8,)
    again = batches([RandomCrop(size=8, padding=1), CornerMask()], in_memory=in_memory)
    first = batches([RandomCrop(size=8, padding=1), CornerMask()], in_memory=in_memory)
    assert all(torch.equal(a[0].mask, b[0].mask) for a, b in zip(first, again, strict=True))  # seeded


def test_dataloader_path_stacks_masked_views() -> None:
    pipeline = [MultiView(num_views=2, pipeline=[RandomCrop(size=8)]), CornerMask()]
    inputs, _ = batches(pipeline, in_memory=False)[0]
    assert isinstance(inputs, Masked) and [v.shape for v in inputs.images] == [(8, 1, 8, 8)] * 2
    assert inputs.mask.shape == (8, 2, 2)


def test_plain_batches_are_unchanged_and_stack_masked_checks_sizes() -> None:
    inputs, _ = batches([RandomCrop(size=8)])[0]
    assert type(inputs) is Tensor  # no mask generator, no Masked
    items = [Masked(torch.zeros(1, 4, 4), torch.zeros(2, 2)), Masked(torch.ones(1, 4, 4), torch.ones(2, 2))]
    out = stack_masked(items)
    assert out.images.shape == (2, 1, 4, 4) and out.mask.dtype == torch.bool and out.mask[1].all()


def test_channels_last_applies_to_the_images_only() -> None:
    m = Masked([torch.zeros(2, 3, 4, 4)], torch.zeros(2, 2, 2, dtype=torch.bool))
    out = _to_memory_format(m, channels_last=True)
    assert isinstance(out, Masked) and out.images[0].is_contiguous(memory_format=torch.channels_last)
    assert out.mask is m.mask and _to_memory_format(m, channels_last=False) is m
