"""Data: bundled digits, ImageFolder, CIFAR files, transforms, the [data] section and loaders."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor

from pretrain.assembly.assemble import build_from_spec
from pretrain.components import BaseDataset, Pipeline, mix_seed, to_channels
from pretrain.engine.data import build_loaders
from pretrain.errors import PretrainError
from pretrain.spec.context import ValidationContext
from pretrain.spec.data_section import DataOptions, DataSection, DatasetSpec, json_schema, validate_data_section
from pretrain_builtins.datasets.cifar import CIFAR10, CIFAR100, load_numpy_pickle
from pretrain_builtins.datasets.digits import DIGITS_FILE, Digits, digits_split
from pretrain_builtins.datasets.image_folder import ImageFolder
from pretrain_builtins.transforms.geometric import (
    CenterCrop,
    RandomCrop,
    RandomFlip,
    RandomResizedCrop,
    Resize,
)
from pretrain_builtins.transforms.multiview import MultiView
from pretrain_builtins.transforms.photometric import (
    ColorJitter,
    GaussianBlur,
    RandomErasing,
    RandomGrayscale,
    Solarize,
)

CPU = torch.device("cpu")


def loaders(section: DataSection, **kw: Any):
    args: dict[str, Any] = {"device": CPU, "distributed": False, "rank": 0, "world_size": 1,
                            "seed": 0, "num_classes": None}
    args.update(kw)
    return build_loaders(section, **args)


def section(train: Any = None, val: Any = None, pipeline: Sequence[Any] = (),
            val_pipeline: Sequence[Any] = (), **options: Any) -> DataSection:
    return DataSection(
        DataOptions(**options),
        None if train is None else DatasetSpec(train, tuple(pipeline), "data.train"),
        None if val is None else DatasetSpec(val, tuple(val_pipeline), "data.val"),
    )


def collect(batches) -> list[tuple[Tensor, Tensor]]:
    return [(x.clone(), y.clone()) for x, y in batches]


class ListDataset(BaseDataset):
    """A tiny in-Python dataset implementing the contract (images of any size)."""

    def __init__(self, images: list[Tensor], labels: list[int], classes: Sequence[str]) -> None:
        self.images, self.classes = images, tuple(classes)
        self._labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def targets(self) -> Tensor:
        return self._labels

    def load_image(self, index: int) -> Tensor:
        return self.images[index]

    def image_shape(self) -> tuple[int, int, int] | None:
        shapes = {tuple(img.shape) for img in self.images}
        return shapes.pop() if len(shapes) == 1 else None  # type: ignore[return-value]


def numbered(n: int, size: int = 8) -> ListDataset:
    """Image i is filled with the value i, so a batch reveals which samples it holds."""
    images = [torch.full((1, size, size), i, dtype=torch.uint8) for i in range(n)]
    return ListDataset(images, [i % 2 for i in range(n)], ["even", "odd"])


def ids(batch: Tensor) -> list[int]:
    return batch[:, 0, 0, 0].tolist()


# --------------------------------------------------------------------------- digits


def test_digits_counts_and_fixed_split() -> None:
    full, train, val = Digits(split="all"), Digits(split="train"), Digits(split="val")
    assert (len(full), len(train), len(val)) == (1797, 1438, 359)
    assert full.classes == tuple("0123456789")
    assert np.bincount(full.targets.numpy()).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert np.bincount(val.targets.numpy()).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    tr, va = set(digits_split("train").tolist()), set(digits_split("val").tolist())
    assert not tr & va and tr | va == set(range(1797))
    # The split is part of the format: pin it so results stay comparable across versions.
    digest = hashlib.sha256(digits_split("val").astype("<i8").tobytes()).hexdigest()
    assert digest == "04eefb993aa0c281477e0cf81fe75e3b56872a65a721faf577ada029df41e2ce"


def test_digits_pixels_sizes_and_channels() -> None:
    small = Digits(split="all", image_size=8)
    images, labels = small.load_all()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.uint8
    assert int(images.max()) == 255 and int(images.min()) == 0  # 0..16 scaled to 0..255
    assert labels.dtype == torch.long
    big = Digits(split="val", image_size=32, channels=3)
    assert big.load_image(0).shape == (3, 32, 32) and big.image_shape() == (3, 32, 32)
    assert torch.equal(big.load_image(0)[0], big.load_image(0)[2])


def test_digits_file_is_the_bundled_original() -> None:
    from importlib import resources

    data = resources.files("pretrain_builtins.datasets").joinpath(DIGITS_FILE).read_bytes()
    assert len(data) < 1_000_000
    assert hashlib.sha256(data).hexdigest() == (
        "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
    )
    attribution = resources.files("pretrain_builtins.datasets").joinpath("data/ATTRIBUTION.md")
    assert "CC BY 4.0" in attribution.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- ImageFolder


def write_png(path: Path, mode: str, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_png(root / "cat" / "a.png", "RGB", (12, 10), 10)
    write_png(root / "cat" / "sub" / "b.jpg", "RGB", (9, 9), 20)
    write_png(root / "dog" / "c.png", "L", (10, 12), 30)
    write_png(root / "dog" / "d.png", "L", (8, 8), 40)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"ignored")
    return root


def test_image_folder_scans_classes_and_converts_channels(folder: Path) -> None:
    ds = ImageFolder(root=str(folder))
    assert ds.classes == ("cat", "dog") and len(ds) == 4
    assert ds.targets.tolist() == [0, 0, 1, 1]
    assert [Path(p).name for p, _ in ds.samples] == ["a.png", "b.jpg", "c.png", "d.png"]
    gray_as_rgb = ds.load_image(2)
    assert gray_as_rgb.shape == (3, 12, 10) and gray_as_rgb.dtype == torch.uint8
    assert torch.equal(gray_as_rgb[0], gray_as_rgb[1]) and int(gray_as_rgb[0, 0, 0]) == 30
    gray = ImageFolder(root=str(folder), channels=1)
    assert gray.load_image(0).shape == (1, 10, 12)
    # RGB -> gray in the loader matches Pillow's own conversion.
    assert torch.equal(to_channels(ds.load_image(0), 1), gray.load_image(0))
    picked = ImageFolder(root=str(folder), classes=["dog"])
    assert picked.classes == ("dog",) and len(picked) == 2 and picked.targets.tolist() == [0, 0]


def test_image_folder_image_size_goes_in_memory(folder: Path) -> None:
    ds = ImageFolder(root=str(folder), image_size=8)
    assert ds.image_shape() == (3, 8, 8)
    images, labels = ds.load_all()
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [0, 0, 1, 1]
    out = loaders(section(ds, ds, batch_size=3), num_classes=2, in_channels=1)
    assert out.in_memory == {"train": True, "val": True} and out.channels == 1
    x, y = next(iter(out.train))
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.uint8 and y.dtype == torch.long


def test_image_folder_of_mixed_sizes_uses_a_dataloader(folder: Path) -> None:
    ds = ImageFolder(root=str(folder))
    out = loaders(section(ds, pipeline=[Resize(size=(6, 6))], batch_size=4, image_size=6),
                  num_classes=2)
    assert out.in_memory == {"train": False}
    (x, y), = collect(out.train)
    assert x.shape == (4, 3, 6, 6) and sorted(y.tolist()) == [0, 0, 1, 1]
    unresized = loaders(section(ds, batch_size=4), num_classes=2)
    with pytest.raises(PretrainError, match="different sizes"):
        collect(unresized.train)


def test_image_folder_errors(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(PretrainError, match="does not exist"):
        ImageFolder(root=str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(PretrainError, match="is a file"):
        ImageFolder(root=str(tmp_path / "file"))
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "x.png", "L", (4, 4), 1)
    with pytest.raises(PretrainError, match="no class sub-folders"):
        ImageFolder(root=str(tmp_path / "flat"))
    (folder / "empty").mkdir()
    with pytest.raises(PretrainError, match=r"empty.*holds no images"):
        ImageFolder(root=str(folder))
    with pytest.raises(PretrainError, match=r"no folder for class\(es\) \['bird'\]"):
        ImageFolder(root=str(folder), classes=["cat", "bird"])


def test_image_folder_unreadable_file_is_named_or_skipped(folder: Path) -> None:
    bad = folder / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(PretrainError, match="broken.png") as info:
        ImageFolder(root=str(folder))
    assert "skip_unreadable" in str(info.value)
    with pytest.warns(UserWarning, match="skipping 1 unreadable"):
        ds = ImageFolder(root=str(folder), skip_unreadable=True)
    assert len(ds) == 4 and all("broken" not in p for p, _ in ds.samples)
    # Without the up-front check the file fails (or is skipped) when it is decoded.
    unchecked = ImageFolder(root=str(folder), verify=False, image_size=4)
    index = [Path(p).name for p, _ in unchecked.samples].index("broken.png")
    with pytest.raises(PretrainError, match="broken.png"):
        unchecked.load_image(index)
    skipping = ImageFolder(root=str(folder), verify=False, image_size=4, skip_unreadable=True)
    with pytest.warns(UserWarning, match="skipped 1"):
        images, labels = skipping.load_all()
    assert images.shape[0] == 4 and labels.tolist() == [0, 0, 1, 1]
    out = loaders(section(ImageFolder(root=str(folder), verify=False, skip_unreadable=True),
                          pipeline=[Resize(size=(4, 4))], batch_size=8, in_memory=False))
    (x, _), = collect(out.train)
    assert x.shape[0] == 4  # the broken file was dropped from its batch


# --------------------------------------------------------------------------- CIFAR


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes pickles the way Python 2's cPickle wrote the official CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        head = bytes([len(data)]) if len(data) < 256 else struct.pack("<i", len(data))
        self.write((pickle.SHORT_BINSTRING if len(data) < 256 else pickle.BINSTRING) + head + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # NumPy 1.x (what the files were written with) lived at numpy.core.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch(n: int, first_label: int, label_key: str, classes: int) -> dict[str, Any]:
    rng = np.random.default_rng(n + first_label)
    return {
        "batch_label": "synthetic",
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [(first_label + i) % classes for i in range(n)],
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(py2_pickle(cifar_batch(4, i, "labels", 10)))
    (folder / "test_batch").write_bytes(py2_pickle(cifar_batch(6, 0, "labels", 10)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(py2_pickle({"label_names": names, "num_vis": 3072}))
    return folder


def test_cifar10_reads_official_python_format(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    train = CIFAR10(root=str(tmp_path), split="train")
    assert len(train) == 20 and train.classes[0] == "airplane" and len(train.classes) == 10
    assert train.load_all()[0].shape == (20, 3, 32, 32)
    raw = load_numpy_pickle(folder / "data_batch_1")
    assert torch.equal(train.load_image(0), torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    assert train.targets[:4].tolist() == [1, 2, 3, 4]
    test = CIFAR10(root=str(folder), split="test", channels=1)  # the folder itself works too
    assert len(test) == 6 and test.load_image(0).shape == (1, 32, 32)


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 5), ("test", 3)):
        batch = cifar_batch(n, 7, "fine_labels", 100)
        batch["coarse_labels"] = [label % 20 for label in batch["fine_labels"]]
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))  # a Python 3 re-save
    meta = {"fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=5))
    fine = CIFAR100(root=str(tmp_path))
    coarse = CIFAR100(root=str(tmp_path), split="test", label_type="coarse")
    assert len(fine) == 5 and len(fine.classes) == 100 and fine.targets.tolist() == [7, 8, 9, 10, 11]
    assert len(coarse) == 3 and len(coarse.classes) == 20


def test_cifar_missing_copy_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(PretrainError) as info:
        CIFAR10(root=str(tmp_path / "data"))
    message = str(info.value)
    assert "cifar-10-batches-py" in message and str(tmp_path / "data") in message
    assert "cifar-10-python.tar.gz" in message and "download = true" in message


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("payload", [
    Evil(),
    {"data": np.zeros((1, 3072), np.uint8), "x": Evil()},
    {"data": np.array([Evil()], dtype=object)},  # an object array's items go through it too
])
def test_cifar_unpickler_refuses_everything_but_numpy(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(PretrainError, match="refusing to load global"):
        load_numpy_pickle(path)


def test_cifar_unpickler_refuses_builtins_and_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(PretrainError, match=r"builtins\.eval"):
        load_numpy_pickle(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(PretrainError, match="not a valid CIFAR"):
        load_numpy_pickle(path)
    folder = write_cifar10(tmp_path / "c")
    (folder / "data_batch_3").write_bytes(py2_pickle({"data": np.zeros((2, 10), np.uint8)}))
    with pytest.raises(PretrainError, match="data_batch_3"):
        CIFAR10(root=str(folder))


# --------------------------------------------------------------------------- transforms

ALL_TRANSFORMS = [
    (Resize(size=12), (12, 12)),
    (Resize(size=(10, 14)), (10, 14)),
    (CenterCrop(size=10), (10, 10)),
    (RandomCrop(size=16, padding=2), (16, 16)),
    (RandomCrop(size=20, pad_if_needed=True, padding_mode="reflect"), (20, 20)),
    (RandomResizedCrop(size=12), (12, 12)),
    (RandomFlip(), (16, 16)),
    (ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, prob=0.8), (16, 16)),
    (RandomGrayscale(prob=0.5), (16, 16)),
    (GaussianBlur(kernel_size=3), (16, 16)),
    (Solarize(), (16, 16)),
    (RandomErasing(prob=1.0), (16, 16)),
]


@pytest.mark.parametrize(("transform", "size"), ALL_TRANSFORMS, ids=lambda t: type(t).__name__)
def test_transform_shapes_dtypes_and_determinism(transform: torch.nn.Module, size: tuple[int, int]) -> None:
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    out = transform(images, generator=torch.Generator().manual_seed(1))
    assert out.shape == (5, 3, *size) and out.dtype == torch.uint8
    again = transform(images, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    single = transform(images[0], generator=torch.Generator().manual_seed(1))
    assert single.shape == (3, *size) and single.dtype == torch.uint8
    gray = transform(images[:, :1], generator=torch.Generator().manual_seed(1))
    assert gray.shape == (5, 1, *size)


def test_random_transforms_draw_per_sample() -> None:
    same = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(16, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    crops = RandomCrop(size=16, padding=4)(same, generator=gen)
    assert len({c.numpy().tobytes() for c in crops}) > 8
    flips = RandomFlip()(same, generator=gen)
    flipped = (flips != same).flatten(1).any(1)
    assert 0 < int(flipped.sum()) < 16
    rrc = RandomResizedCrop(size=8)(same, generator=gen)
    assert len({c.numpy().tobytes() for c in rrc}) == 16


def test_transforms_match_torchvision_formulas() -> None:
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    gen = torch.Generator()
    for transform, reference in [
        (ColorJitter(brightness=(1.3, 1.3)), TF.adjust_brightness(images, 1.3)),
        (ColorJitter(contrast=(0.5, 0.5)), TF.adjust_contrast(images, 0.5)),
        (ColorJitter(saturation=(0.5, 0.5)), TF.adjust_saturation(images, 0.5)),
        (ColorJitter(hue=(0.2, 0.2)), TF.adjust_hue(images, 0.2)),
        (GaussianBlur(kernel_size=5, sigma=(1.0, 1.0)), TF.gaussian_blur(images, [5, 5], [1.0, 1.0])),
        (RandomFlip(prob=1.0), TF.horizontal_flip(images)),
        (RandomGrayscale(prob=1.0), TF.rgb_to_grayscale(images, 3)),
        (Solarize(prob=1.0), TF.solarize(images, 128)),
    ]:
        out = transform(images, generator=gen)
        # torchvision truncates to uint8 after every step; we round once: off by one at most.
        assert (out.int() - reference.int()).abs().max() <= 1, type(transform).__name__
    identity = RandomResizedCrop(size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(identity(images, generator=gen), images)
    assert torch.equal(RandomCrop(size=16)(images, generator=gen), images)


def test_multiview_and_registry_built_pipeline() -> None:
    view = build_from_spec("transform", {
        "type": "MultiView", "num_views": 3,
        "pipeline": [{"type": "RandomResizedCrop", "size": 8}, {"type": "RandomFlip"}],
    })
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    views = Pipeline([view])(images, generator=torch.Generator().manual_seed(0))
    assert isinstance(views, list) and len(views) == 3
    assert all(v.shape == (4, 3, 8, 8) for v in views) and not torch.equal(views[0], views[1])
    with pytest.raises(ValueError, match="another MultiView"):
        MultiView(pipeline=[MultiView(pipeline=[])])


@pytest.mark.parametrize("in_memory", [True, False])
def test_multiview_views_of_different_sizes_reach_the_model_batched_per_view(in_memory: bool) -> None:
    """BYOL-style list form: one 8 px view and two 6 px views per image, both loader paths."""
    views = {"type": "MultiView", "num_views": [1, 2], "transforms": [
        [{"type": "RandomCrop", "size": 8, "padding": 1}], [{"type": "RandomResizedCrop", "size": 6}]]}
    raw = {"batch_size": 4, "image_size": 8, "in_memory": in_memory, "num_workers": 0,
           "train": {"type": "Digits", "split": "val", "image_size": 8, "pipeline": [views]}}
    ctx = ValidationContext()
    section = validate_data_section(raw, ctx)
    assert section is not None, ctx.issues
    train = loaders(section).train
    train.set_epoch(0)
    batch, labels = next(iter(train))
    assert [tuple(v.shape) for v in batch] == [(4, 1, 8, 8), (4, 1, 6, 6), (4, 1, 6, 6)]
    assert labels.shape == (4,)


# --------------------------------------------------------------------------- loaders


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    spec = section(numbered(50), pipeline=[RandomCrop(size=8, padding=1)], batch_size=8)
    a, b = loaders(spec, seed=3).train, loaders(spec, seed=3).train
    assert a is not None and b is not None and len(a) == 7
    a.set_epoch(2)
    b.set_epoch(0)
    list(b)  # consuming other epochs first must not matter
    b.set_epoch(2)
    first, second = collect(a), collect(b)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2)
               for (x1, y1), (x2, y2) in zip(first, second, strict=True))
    seen = sorted(i for x, _ in first for i in x[:, 0, 4, 4].tolist())
    assert seen == list(range(50))
    a.set_epoch(3)
    assert [y.tolist() for _, y in collect(a)] != [y.tolist() for _, y in first]
    assert a.indices(2).tolist() != loaders(spec, seed=4).train.indices(2).tolist()


@pytest.mark.parametrize("in_memory", [True, False])
def test_resume_mid_epoch_replays_the_same_batches(in_memory: bool) -> None:
    spec = section(numbered(30), pipeline=[RandomCrop(size=8, padding=2), RandomFlip()],
                   batch_size=4, in_memory=in_memory)
    train = loaders(spec, seed=11).train
    assert train is not None
    full = collect(train.iter_from(5, 0))
    tail = collect(loaders(spec, seed=11).train.iter_from(5, 3))
    assert len(tail) == len(full) - 3
    for (x1, y1), (x2, y2) in zip(full[3:], tail, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_dataloader_workers_do_not_change_batches() -> None:
    spec0 = section(numbered(12), pipeline=[RandomCrop(size=8, padding=2)], batch_size=5,
                    in_memory=False, num_workers=0)
    spec2 = section(numbered(12), pipeline=[RandomCrop(size=8, padding=2)], batch_size=5,
                    in_memory=False, num_workers=2)
    base, workers = collect(loaders(spec0).train), collect(loaders(spec2).train)
    assert len(base) == 3
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(base, workers, strict=True))


@pytest.mark.parametrize(("n", "drop_last"), [(24, False), (23, False), (23, True)])
def test_distributed_shards(n: int, drop_last: bool) -> None:
    world, batch = 3, 2
    spec = section(numbered(n), numbered(n), batch_size=batch, drop_last=drop_last)
    ranks = [loaders(spec, distributed=True, rank=r, world_size=world, seed=5) for r in range(world)]
    train = [[ids(x) for x, _ in r.train.iter_from(1)] for r in ranks]
    assert len({len(t) for t in train}) == 1  # every rank steps the same number of times
    flat = [i for t in train for b in t for i in b]
    if n % world == 0:
        assert sorted(flat) == list(range(n))  # disjoint and complete
    elif drop_last:
        assert len(set(flat)) == len(flat) == world * (n // world // batch * batch)
    else:
        assert set(flat) == set(range(n)) and len(flat) == world * -(-n // world)  # wrap padding
    # Same global batch as one process with world * batch: DDP averages the same samples.
    single = loaders(section(numbered(n), batch_size=world * batch, drop_last=drop_last), seed=5)
    for step, whole in enumerate(single.train.iter_from(1)):
        if step >= len(train[0]) or (not drop_last and n % world):
            break
        assert sorted(ids(whole[0])) == sorted(i for t in train for i in t[step])
    # Evaluation: disjoint shards without padding; per-rank counts add up exactly.
    val = [[i for x, _ in r.val for i in ids(x)] for r in ranks]
    assert sorted(i for v in val for i in v) == list(range(n))
    assert sum(r.val.num_samples for r in ranks) == n == ranks[0].val.total_samples


# --------------------------------------------------------------------------- checks


def test_class_count_must_match_the_head() -> None:
    with pytest.raises(PretrainError, match=r"data\.train: the dataset has 10 classes but the model "
                       r"predicts num_classes = 5") as info:
        loaders(section(Digits(split="train")), num_classes=5)
    assert "num_classes=10" in str(info.value)


def test_empty_dataset_and_other_checks(folder: Path) -> None:
    with pytest.raises(PretrainError, match=r"data\.val: the dataset is empty"):
        loaders(section(val=ListDataset([], [], ["a"])))
    with pytest.raises(PretrainError, match="produces 28×28 images but data.image_size = 32"):
        loaders(section(Digits(split="val"), pipeline=[CenterCrop(size=28)], image_size=32))
    with pytest.raises(PretrainError, match="channels = 3 but the model takes 1-channel"):
        loaders(section(Digits(split="val", channels=3)), in_channels=1)
    with pytest.raises(PretrainError, match=r"data\.val: its classes"):
        loaders(section(ImageFolder(root=str(folder)), ImageFolder(root=str(folder), classes=["dog", "cat"])))
    with pytest.raises(PretrainError, match="no batch of 64"):
        loaders(section(numbered(10), batch_size=64, drop_last=True))


def test_digits_loaders_are_fast_and_in_memory() -> None:
    spec = section(Digits(split="train"), Digits(split="val"),
                   pipeline=[RandomCrop(size=32, padding=2)], batch_size=64, image_size=32)
    out = loaders(spec, num_classes=10, in_channels=3)
    assert out.in_memory == {"train": True, "val": True} and out.classes == tuple("0123456789")
    assert (len(out.train), len(out.val), out.val.num_samples) == (23, 6, 359)
    batches = collect(out.train)
    assert sum(len(y) for _, y in batches) == 1438
    assert batches[0][0].shape == (64, 3, 32, 32) and batches[0][0].dtype == torch.uint8


# --------------------------------------------------------------------------- spec section


def test_validate_data_section_and_build() -> None:
    raw = {
        "batch_size": 32, "image_size": 32,
        "train": {"type": "Digits", "split": "train",
                  "pipeline": [{"type": "RandomCrop", "size": 32, "padding": 2}]},
        "val": {"type": "Digits", "split": "val"},
    }
    ctx = ValidationContext()
    validated = validate_data_section(raw, ctx)
    assert not ctx.issues and validated is not None
    assert validated.options.batch_size == 32 and len(validated.train.pipeline) == 1
    out = loaders(validated, num_classes=10)
    assert len(out.train) == 45 and out.channels == 1


def test_validate_data_section_reports_every_problem_with_its_path() -> None:
    raw = {
        "batch_sise": 3, "in_memory": "sometimes",
        "train": {"type": "Digitz", "pipeline": [{"type": "RandomCrop"}, {"type": "Flip"}]},
        "val": {"type": "Digits", "split": "test"},
    }
    ctx = ValidationContext()
    assert validate_data_section(raw, ctx) is None
    locs = {issue.loc for issue in ctx.issues}
    assert {"data.batch_sise", "data.in_memory", "data.train.type", "data.train.pipeline[0].size",
            "data.train.pipeline[1].type", "data.val.split"} <= locs
    text = "\n".join(map(str, ctx.issues))
    assert "did you mean 'batch_size'" in text and "'Digits'" in text
    ctx = ValidationContext()
    assert validate_data_section({"batch_size": 4}, ctx) is None
    assert "no dataset" in str(ctx.issues[0])


def test_data_json_schema_accepts_specs_and_rejects_typos() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from pretrain.spec.jsonschema import spec_json_schema

    data = json_schema()
    root = {**data, "$defs": {**spec_json_schema()["$defs"], **data.pop("$defs")}}
    jsonschema.validate({"batch_size": 8, "train": {
        "type": "Digits", "pipeline": [{"type": "RandomCrop", "size": 32, "padding": 2}]}}, root)
    for bad in ({"train": {"type": "Digits", "splt": "val"}},
                {"val": {"type": "Digits", "pipeline": [{"type": "RandomCrop"}]}},
                {"batch_size": 0}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, root)


def test_mix_seed_is_stable() -> None:
    assert mix_seed(0, 0) != mix_seed(0, 1) != mix_seed(1, 0)
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3) and 0 <= mix_seed(-1, 2**70) < 2**63
    assert mix_seed(0, 1) == 6431972100845284338  # pinned: resumed runs depend on it


# --------------------------------------------------------------------------- CUDA (skipped on CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_augmented_on_the_device_and_resumable() -> None:
    cuda = torch.device("cuda")
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    for transform, size in ALL_TRANSFORMS:
        out = transform(images.to(cuda), generator=torch.Generator(device=cuda).manual_seed(0))
        again = transform(images.to(cuda), generator=torch.Generator(device=cuda).manual_seed(0))
        assert out.is_cuda and out.dtype == torch.uint8 and out.shape == (6, 3, *size)
        assert torch.equal(out, again), type(transform).__name__
    for transform in (Resize(size=12), CenterCrop(size=10), GaussianBlur(kernel_size=3, sigma=(1.0, 1.0)),
                      RandomResizedCrop(size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0))):
        on_gpu = transform(images.to(cuda), generator=torch.Generator(device=cuda)).cpu()
        assert (on_gpu.int() - transform(images).int()).abs().max() <= 1, type(transform).__name__
    pipeline = [RandomResizedCrop(size=32, scale=(0.5, 1.0)), RandomFlip(), ColorJitter(brightness=0.4)]
    spec = section(Digits(split="train"), Digits(split="val"), pipeline=pipeline, batch_size=128,
                   image_size=32)
    out = loaders(spec, device=cuda, num_classes=10, in_channels=3)
    x, y = next(iter(out.train))
    assert x.is_cuda and y.is_cuda and x.shape == (128, 3, 32, 32)
    full = collect(out.train.iter_from(1))
    tail = collect(loaders(spec, device=cuda, num_classes=10, in_channels=3).train.iter_from(1, 4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[4:], tail, strict=True))
    slow = section(numbered(20), pipeline=[RandomCrop(size=8, padding=1)], batch_size=6,
                   in_memory=False, num_workers=2)
    batches = collect(loaders(slow, device=cuda).train)
    assert all(x.is_cuda for x, _ in batches) and sum(len(y) for _, y in batches) == 20
