"""WebDataset shards: ``pretrain shard``, exact epochs over ranks and workers, bitwise resume after SIGKILL."""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from _engine_specs import TINY_RESNET, tiny_spec, write_spec
from conftest import run_cli
from pretrain.components import ShardInfo
from pretrain.engine import checkpoint as ckpt
from pretrain.engine.stream import _shard_order, _StreamWorkers, plan_pieces
from pretrain.errors import PretrainError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("webdataset") is None, reason="pretrain[webdataset] missing")
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find torchrun's workers")

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits as PNG ImageFolders, sharded by ``pretrain shard`` (train: 15 shards of <= 100)."""
    from pretrain.cli._shard import write_shards
    from pretrain.registry.registry import get_registry

    root = tmp_path_factory.mktemp("wds")
    digits = get_registry().get("dataset", "Digits")
    for split in ("train", "val"):
        ds = digits(split=split, image_size=8)
        for i in range(len(ds)):
            image, label = ds[i]
            folder = root / f"folder_{split}" / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{i:04d}.png")
        write_shards(str(root / f"folder_{split}"), str(root / split), shard_size=100)
    return root


def _spec(root: Path, **train: object) -> dict:
    data = {"batch_size": 32, "num_workers": 2,
            "train": {"type": "WebDataset", "shards": str(root / "train" / "shard-{000000..000014}.tar"),
                      "shuffle_buffer": 200, "pipeline": [{"type": "RandomCrop", "size": 8, "padding": 1}]},
            "val": {"type": "WebDataset", "shards": str(root / "val" / "shard-{000000..000003}.tar")}}
    return tiny_spec(TINY_RESNET, data=data, optimizer={"type": "SGD", "lr": 0.05, "momentum": 0.9}, **train)


def test_shard_index_and_dataset(shards: Path) -> None:
    index = json.loads((shards / "train" / "index.json").read_text())
    assert index["samples"] == 1438 and len(index["shards"]) == 15 and index["classes"] == [str(i) for i in range(10)]
    assert [s["samples"] for s in index["shards"]] == [100] * 14 + [38]
    with tarfile.open(shards / "train" / "shard-000000.tar") as tar:  # plain ustar: no PAX header to parse
        members = tar.getmembers()
    assert len(members) == 200 and not any(m.pax_headers for m in members)
    from pretrain.registry.registry import get_registry

    wds = get_registry().get("dataset", "WebDataset")
    ds = wds(shards=str(shards / "train" / "shard-{000000..000014}.tar"))
    assert len(ds) == 1438 and tuple(ds.classes) == tuple(index["classes"])
    image, label = ds.decode(next(ds.read(ds.shards()[0].url, 3, 4)))
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8) and 0 <= label < 10
    # Without the index: counted by reading the shards; the class names must then be given.
    (shards / "copy").mkdir(exist_ok=True)
    (shards / "copy" / "a.tar").write_bytes((shards / "train" / "shard-000014.tar").read_bytes())
    with pytest.raises(PretrainError, match="class names"):
        wds(shards=str(shards / "copy" / "a.tar"))
    assert len(wds(shards=str(shards / "copy" / "a.tar"), num_classes=10)) == 38
    assert len(wds(shards=str(shards / "copy" / "a.tar"), unlabelled=True).classes) == 0


def test_shard_cli_refuses_to_overwrite_and_names_the_extra(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = run_cli("shard", str(shards / "folder_val"), str(shards / "val"), env=ENV)
    assert proc.returncode == 1 and "already holds shards" in proc.stderr
    from pretrain.cli._shard import write_shards

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "webdataset" else real(n, *a))
    with pytest.raises(PretrainError, match=r"pip install 'pretrain\[webdataset\]'"):
        write_shards(str(shards / "folder_val"), str(shards / "new"), shard_size=10)


def _train_loader(shards: Path) -> Any:
    from pretrain.engine.data import build_loaders
    from pretrain.spec.context import ValidationContext
    from pretrain.spec.data_section import validate_data_section

    ctx = ValidationContext()
    section = validate_data_section(_spec(shards)["data"], ctx)
    assert section is not None, ctx.issues
    return build_loaders(section, device=torch.device("cpu"), distributed=False, rank=0, world_size=1, seed=3,
                         num_classes=None, in_channels=3, splits=("train",)).train


def test_stream_workers_persist_across_epochs_and_read_each_epochs_plan(shards: Path) -> None:
    """The same 2 worker processes serve every epoch; the epoch and resume point reach them each time."""
    loader = _train_loader(shards)
    pids = set()

    def epoch(e: int, start: int = 0) -> list[torch.Tensor]:
        batches = [x for x, _ in loader.iter_from(e, start)]
        pids.add(tuple(sorted(w.pid for w in loader._workers.loader._iterator._workers)))
        return batches

    first, second = epoch(0), epoch(1)
    assert len(pids) == 1 and len(next(iter(pids))) == 2  # not restarted between epochs
    assert len(first) == len(second) == 45 and not torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(epoch(1, 7), second[7:], strict=True))  # resume point
    assert all(torch.equal(a, b) for a, b in zip(epoch(0), first, strict=True))  # and back to epoch 0
    fresh = _train_loader(shards)  # new processes started at epoch 1: the same batches
    assert all(torch.equal(a, b) for (a, _), b in zip(fresh.iter_from(1), second, strict=True))
    assert len(pids) == 1


@pytest.mark.parametrize(("world", "workers", "drop_last"), [(1, 1, False), (2, 2, False), (3, 2, True), (2, 3, False)])
def test_plan_covers_every_sample_once_across_ranks_and_workers(world: int, workers: int, drop_last: bool) -> None:
    counts = [100, 7, 55, 100, 1, 38]
    shards = [ShardInfo(f"s{i}", n) for i, n in enumerate(counts)]
    n, batch = sum(counts), 16

    class Source:
        num_workers, size, shuffle_buffer = workers, n, 0

    Source.shards = shards  # type: ignore[attr-defined]
    seen: collections.Counter[int] = collections.Counter()
    batches = 0
    for rank in range(world):
        plan = _StreamWorkers(Source(), rank=rank, world_size=world, batch_size=batch, drop_last=drop_last,  # type: ignore[arg-type]
                              shuffle=True, seed=3)
        order = _shard_order(shards, 3, 1, True)
        numbers = []
        for w in range(workers):
            start, stop, sizes = plan._worker_slice(w)
            assert stop - start == sum(sizes) and all(s == batch for s in sizes[:-1])
            numbers += [j * workers + w for j in range(len(sizes))]
            for piece in plan_pieces(order, start, stop):
                seen.update(range(piece.position, piece.position + piece.stop - piece.start))
        assert sorted(numbers) == list(range(plan.num_batches()))  # batch g is on worker g % workers
        batches += plan.num_batches()
    per_rank = n // world if drop_last else -(-n // world)
    used = world * ((per_rank // batch) * batch if drop_last else per_rank)
    assert sum(seen.values()) == used
    wrapped = {p % n for p in seen}
    if not drop_last:
        assert wrapped == set(range(n))  # every sample at least once; only the wrap-around padding repeats
        assert sum(seen.values()) - n == world * per_rank - n < world
    else:
        assert max(collections.Counter(p % n for p in seen.elements()).values()) == 1


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


@pytest.mark.slow
@needs_proc
def test_two_processes_see_every_sample_once_per_epoch_and_resume_after_sigkill(shards: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "wds.toml", _spec(shards, epochs=2, checkpoint_every_steps=5))
    # Uninterrupted: 2 processes x 2 DataLoader workers, every decoded sample recorded.
    proc = subprocess.run(_torchrun(str(HERE / "dist_wds_count.py"), str(spec), str(tmp_path / "straight"),
                                    str(tmp_path / "keys")),
                          capture_output=True, text=True, env=ENV, timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line.split() for f in (tmp_path / "keys").glob("keys-*.txt") for line in f.read_text().splitlines()]
    # 2 ranks x 2 workers, the same (persistent) worker processes in both epochs
    assert len({f.name for f in (tmp_path / "keys").glob("keys-*.txt")}) == 4
    for epoch in ("0", "1"):
        keys = collections.Counter(key for _, e, key in lines if e == epoch)
        assert len(keys) == 1438 and set(keys.values()) == {1}, collections.Counter(keys.values())
        by_rank = collections.Counter(rank for rank, e, _ in lines if e == epoch)
        assert by_rank == {"0": 719, "1": 719}
    history = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [23, 46] and history[-1]["accuracy/top1"] > 20

    # The same run killed (SIGKILL: trainer processes, torchrun and workers) mid-way through
    # epoch 2, then resumed: the final weights are bit-identical.
    run = tmp_path / "killed"
    killed = subprocess.Popen(_torchrun("-m", "pretrain.cli", "train", str(spec), "--run-dir", str(run), "--plain"),
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, info = time.monotonic() + 300, {}
    while time.monotonic() < deadline and killed.poll() is None:
        try:
            info = json.loads((run / "checkpoints" / "last.json").read_text())
            if info["step"] >= 30:  # 23 steps per epoch
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    for pid in _tree(killed.pid):  # the agent, both trainers and their DataLoader workers
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed.wait()
    assert 23 < info.get("step", 0) < 46, info
    resumed = subprocess.run(_torchrun("-m", "pretrain.cli", "train", str(spec), "--run-dir", str(run), "--resume",
                                       "--plain"), capture_output=True, text=True, env=ENV, timeout=400, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at step {info['step_in_epoch']}/23" in resumed.stderr

    a, _ = ckpt.load_tensors(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b, _ = ckpt.load_tensors(run / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in again] == [r["train_loss"] for r in history]


def test_scale_example_spec_validates_with_mmpretrain_parameter_count(capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import SPECS
    from pretrain.cli._main import run_cli as run_in_process

    code = run_in_process(["validate", str(SPECS / "mae_vit-large-p16_webdataset_fsdp.toml"), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["ok"], payload["errors"]
    # ViT-L/16 encoder (303.1 M trainable) + the 8-layer 512-wide decoder, fixed sin-cos pos-embeds included
    assert payload["params"] == 329_541_888
