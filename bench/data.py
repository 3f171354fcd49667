"""Data-loading throughput: our DataLoader path vs torchvision's ``ImageFolder`` + transforms v2.

Both sides decode the same JPEG files (generated here: smooth random images of
varying sizes around 320x256, nothing downloaded), apply RandomResizedCrop(224) and
a horizontal flip, and batch them with the same ``--workers`` DataLoader workers and
batch size. Rounds alternate (ours, torchvision, ours-from-WebDataset-shards, ...) so
machine noise hits every side alike; the figures are medians over rounds of images/s,
and the ratio ours / torchvision (target >= 1.0), also per round. Then the same
work runs in the main process alone (no workers) and is timed in CPU seconds per
image: the cost inside each worker, the steadier measure on a shared machine.

On CUDA it also measures the GPU-decode option: workers only read the file bytes,
``torchvision.io.decode_jpeg(..., device="cuda")`` decodes a whole batch on the GPU,
and the crop/flip run there too.

Usage::

    python bench/data.py                         # 512 images, 2 workers, 5 rounds
    python bench/data.py --images 2000 --workers 8 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_jpegs(root: Path, count: int, classes: int = 4, seed: int = 0) -> None:
    """``count`` JPEGs (quality 90) of smooth random colour fields, in ``classes`` folders."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = int(rng.integers(224, 320)), int(rng.integers(256, 400))
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:05d}.jpg", quality=90)


def ours(folder: Path, workers: int, batch: int) -> Callable[[], Iterable[Any]]:
    """Our engine's DataLoader path over an ImageFolder (what `pretrain train` uses)."""
    return _ours({"type": "ImageFolder", "root": str(folder), "verify": False}, workers, batch)


def ours_webdataset(shards: Path, workers: int, batch: int) -> Callable[[], Iterable[Any]]:
    """Our stream loader over WebDataset shards of the same files."""
    n = len(list(shards.glob("*.tar")))
    pattern = str(shards / f"shard-{{000000..{n - 1:06d}}}.tar")
    return _ours({"type": "WebDataset", "shards": pattern, "shuffle_buffer": 256}, workers, batch)


def _ours(dataset: dict[str, Any], workers: int, batch: int) -> Callable[[], Iterable[Any]]:
    from pretrain.engine.data import build_loaders
    from pretrain.spec.context import ValidationContext
    from pretrain.spec.data_section import validate_data_section

    ctx = ValidationContext()
    raw = {"batch_size": batch, "num_workers": workers, "in_memory": False,
           "train": {**dataset, "pipeline": [{"type": "RandomResizedCrop", "size": 224}, {"type": "RandomFlip"}]}}
    section = validate_data_section(raw, ctx)
    assert section is not None, ctx.issues
    loaders = build_loaders(section, device=torch.device("cpu"), distributed=False, rank=0, world_size=1, seed=0,
                            num_classes=None, in_channels=3)
    assert loaders.train is not None
    epoch = iter(range(1_000_000))
    train = loaders.train
    return lambda: train.iter_from(next(epoch), 0)


def torchvision_v2(folder: Path, workers: int, batch: int) -> Callable[[], Iterable[Any]]:
    """torchvision's ImageFolder (PIL decode) + transforms v2 on uint8 tensors, same workers and batch."""
    import torchvision
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(224, antialias=True),
                            v2.RandomHorizontalFlip()])
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    return lambda: loader


def gpu_decode(folder: Path, workers: int, batch: int) -> Callable[[], Iterable[Any]]:
    """Workers read bytes; ``decode_jpeg`` decodes the batch on the GPU; crop and flip there too."""
    import torchvision
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2

    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    crop = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])

    class Bytes(torch.utils.data.Dataset[Any]):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int) -> Any:
            return read_file(files[i])

    loader = torch.utils.data.DataLoader(Bytes(), batch_size=batch, shuffle=True, num_workers=workers,
                                         collate_fn=list, persistent_workers=workers > 0)

    def run() -> Iterable[Any]:
        for data in loader:
            images = decode_jpeg(data, device="cuda")
            yield torch.stack([crop(img) for img in images])

    del torchvision
    return run


def timed(make: Callable[[], Iterable[Any]], sync: bool = False) -> float:
    """Images per second of one pass."""
    t0, n = time.perf_counter(), 0
    for item in make():
        images = item[0] if isinstance(item, tuple | list) and len(item) == 2 else item
        n += len(images)
    if sync:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def cpu_ms(make: Callable[[], Iterable[Any]]) -> float:
    """CPU milliseconds (this process) per image of one pass."""
    t0, n = time.process_time(), 0
    for item in make():
        n += len(item[0])
    return (time.process_time() - t0) * 1e3 / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the workers do the work; the main process only collates
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = Path(tmp) / "images", Path(tmp) / "shards"
        make_jpegs(folder, args.images)
        from pretrain.cli._shard import write_shards

        write_shards(str(folder), str(shards), shard_size=max(1, args.images // 8))
        sides: dict[str, Callable[[], Iterable[Any]]] = {
            "ours (ImageFolder)": ours(folder, args.workers, args.batch),
            "torchvision ImageFolder + v2": torchvision_v2(folder, args.workers, args.batch),
            "ours (WebDataset shards)": ours_webdataset(shards, args.workers, args.batch),
        }
        cuda = torch.cuda.is_available()
        if cuda:
            sides["GPU decode_jpeg (cuda)"] = gpu_decode(folder, args.workers, args.batch)
        for make in sides.values():  # warm-up: worker start, page cache
            timed(make)
        rates: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(args.rounds):
            for name, make in sides.items():
                rates[name].append(timed(make, sync=cuda and "GPU" in name))
        # The same work in this process alone (no workers), timed in CPU seconds: what
        # each worker spends per image, barely moved by other jobs on a shared machine.
        inline = {"ours (ImageFolder)": ours(folder, 0, args.batch),
                  "torchvision ImageFolder + v2": torchvision_v2(folder, 0, args.batch),
                  "ours (WebDataset shards)": ours_webdataset(shards, 0, args.batch)}
        cpu: dict[str, list[float]] = {k: [] for k in inline}
        for _ in range(args.rounds):
            for name, make in inline.items():
                cpu[name].append(cpu_ms(make))
    base = statistics.median(rates["torchvision ImageFolder + v2"])
    print(f"data loading, {args.images} JPEGs ~320x256 -> RandomResizedCrop 224 + flip, batch {args.batch}, "
          f"{args.workers} workers, median of {args.rounds} interleaved rounds (torch {torch.__version__})")
    tv = rates["torchvision ImageFolder + v2"]
    for name, values in rates.items():
        med = statistics.median(values)
        # Each round's own ratio too: the two sides ran back to back, so a busy spell on
        # the machine hits both; their median is the steadier figure on a shared machine.
        per_round = [v / t for v, t in zip(values, tv, strict=True)]
        print(f"  {name:32s} {med:8.1f} images/s   ratio vs torchvision {med / base:5.2f}x   "
              f"per-round ratios {' '.join(f'{r:.2f}' for r in per_round)} (median {statistics.median(per_round):.2f})")
    if not cuda:
        print("  GPU decode_jpeg: skipped (no CUDA device)")
    tv_cpu = statistics.median(cpu["torchvision ImageFolder + v2"])
    print(f"CPU time per image in one process (num_workers=0), median of {args.rounds} interleaved rounds:")
    for name, values in cpu.items():
        med = statistics.median(values)
        print(f"  {name:32s} {med:8.3f} ms/image   torchvision / ours {tv_cpu / med:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "core"))
    sys.exit(main())
