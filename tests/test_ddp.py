"""DDP on 2 CPU processes (gloo, torchrun): ranks agree, and equal one process with the same global batch."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _engine_specs import TINY_VIT, digits_data, tiny_spec, write_spec
from pretrain.engine import checkpoint as ckpt

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _spec(tmp: Path, name: str, batch_size: int) -> Path:
    data = digits_data(batch_size=batch_size, augment=False)
    data["drop_last"] = True  # identical batches: 2 x 16 per step == 1 x 32
    return write_spec(tmp / name, tiny_spec(
        TINY_VIT, data=data, epochs=1, max_steps=12,
        optimizer={"type": "SGD", "lr": 0.05, "momentum": 0.9},
        schedule={"type": "cosine", "warmup_steps": 3},
        checkpoint_every_steps=5, grad_clip=10.0,
    ))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_processes_match_one_process(tmp_path: Path) -> None:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = subprocess.run(
        [*torchrun, str(HERE / "dist_equivalence.py"), str(_spec(tmp_path, "ddp.toml", 16)),
         str(tmp_path / "ddp_run"), str(tmp_path / "ddp_out")],
        capture_output=True, text=True, env=ENV, timeout=240, check=False,
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    single = subprocess.run(
        [sys.executable, str(HERE / "dist_equivalence.py"), str(_spec(tmp_path, "one.toml", 32)),
         str(tmp_path / "one_run"), str(tmp_path / "one_out")],
        capture_output=True, text=True, env=ENV, timeout=240, check=False,
    )
    assert single.returncode == 0, single.stderr[-4000:]

    w0, _ = ckpt.load_tensors(tmp_path / "ddp_out" / "rank0.safetensors")
    w1, _ = ckpt.load_tensors(tmp_path / "ddp_out" / "rank1.safetensors")
    ref, _ = ckpt.load_tensors(tmp_path / "one_out" / "rank0.safetensors")
    assert w0.keys() == w1.keys() == ref.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), f"ranks disagree on {key}"
        torch.testing.assert_close(w0[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)

    s0, s1, one = (json.loads(p.read_text()) for p in (
        tmp_path / "ddp_out" / "rank0.json", tmp_path / "ddp_out" / "rank1.json",
        tmp_path / "one_out" / "rank0.json"))
    assert s0["world_size"] == 2 and one["world_size"] == 1
    assert s0["train_samples"] == s1["train_samples"] == 719  # disjoint halves of 1438
    assert s0["val_samples"] + s1["val_samples"] == 359  # no padded duplicates
    assert s0["eval"] == s1["eval"] and s0["eval"]["num_samples"] == 359
    # Same global batch, same steps: the same loss curve and (up to float noise) accuracy.
    assert s0["record"]["step"] == one["record"]["step"] == 12
    assert s0["record"]["train_loss"] == pytest.approx(one["record"]["train_loss"], rel=1e-4)
    assert abs(s0["eval"]["accuracy/top1"] - one["eval"]["accuracy/top1"]) <= 100 / 359 + 1e-9

    # Rank 0 alone wrote the run directory, and its checkpoint resumes in one process.
    run = tmp_path / "ddp_run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.safetensors", "last.json", "last.safetensors", "last.state.safetensors"]
    state = ckpt.read_metadata_json(run / "checkpoints" / "last.state.safetensors")
    assert state["world_size"] == 2
    assert {k.split(".")[1] for k in ckpt.load_tensors(
        run / "checkpoints" / "last.state.safetensors")[0] if k.startswith("rng.")} == {"0", "1"}
    shutil.rmtree(tmp_path / "ddp_out")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_evaluation_on_two_processes_equals_one_process(tmp_path: Path) -> None:
    """Classification metrics, confusion matrix, kNN and retrieval (class- and index-labelled).

    One image per forward and one query per similarity chunk make every feature and score
    bitwise the same however the data is sharded, so the counts must be identical.
    """
    from test_retriever import _inshop

    torch.manual_seed(0)
    classifier = tiny_spec()
    classifier["data"]["val_batch_size"] = 1
    classifier["eval"].update(knn={"k": 5}, search={"type": "exact", "chunk_size": 1})
    from pretrain.assembly.assemble import build_model

    weights = tmp_path / "w.safetensors"
    ckpt.save_tensors(weights, build_model(classifier).state_dict(), {})
    retriever = copy.deepcopy(classifier)
    retriever["model"] = {k: v for k, v in classifier["model"].items() if k != "head"}
    retriever["model"]["type"] = "ImageToImageRetriever"
    retriever["data"]["gallery"] = {"type": "Digits", "split": "train", "image_size": 8}
    retriever["eval"] = {"topk": [1, 5, 20], "knn": {"k": 5}, "search": {"type": "exact", "chunk_size": 1}}
    root = _inshop(tmp_path / "inshop")
    inshop = copy.deepcopy(retriever)
    split = {"type": "InShop", "data_root": str(root), "image_size": 8, "channels": 1}
    inshop["data"] = {"batch_size": 1, "val": {**split, "split": "query"}, "gallery": {**split, "split": "gallery"}}
    inshop["eval"] = {"topk": [1, 2], "search": {"type": "exact", "chunk_size": 1}}
    # One query only: rank 1's shard is empty, and must still take part in every collective.
    ann = root / "Eval" / "list_eval_partition.txt"
    lines = ann.read_text().splitlines()
    (root / "Eval" / "one_query.txt").write_text("\n".join(
        [line for line in lines if not line.endswith("query")] + [next(x for x in lines if x.endswith("query"))]))
    single = copy.deepcopy(inshop)
    for table in ("val", "gallery"):
        single["data"][table]["ann_file"] = "Eval/one_query.txt"
    specs = [str(write_spec(tmp_path / f"{name}.toml", spec)) for name, spec in
             (("cls", classifier), ("ret", retriever), ("inshop", inshop), ("single", single))]
    script = [str(HERE / "dist_eval.py")]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *script, str(tmp_path / "two"), str(weights), *specs],
                         capture_output=True, text=True, env=ENV, timeout=240, check=False)
    assert two.returncode == 0, two.stderr[-4000:]
    one = subprocess.run([sys.executable, *script, str(tmp_path / "one"), str(weights), *specs],
                         capture_output=True, text=True, env=ENV, timeout=240, check=False)
    assert one.returncode == 0, one.stderr[-4000:]
    r0, r1, ref = (json.loads((tmp_path / d / f"rank{r}.json").read_text())
                   for d, r in (("two", 0), ("two", 1), ("one", 0)))
    assert r0 == r1  # every rank reports the whole evaluation
    for got, want in zip(r0, ref, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if key.startswith("retrieval/mAP"):  # float sums added in another order
                assert got[key] == pytest.approx(value, rel=1e-12), key
            else:
                assert got[key] == value, key
    cls, ret, ins, one_query = ref
    assert cls["num_samples"] == 359 and sum(map(sum, cls["confusion_matrix"])) == 359
    assert {"single-label/precision", "knn/top1"} <= set(cls)
    assert ret["num_queries"] == 359 and ret["gallery_size"] == 1438 and "retrieval/Recall@20" in ret
    assert ins["num_queries"] == 3 and ins["gallery_size"] == 3
    assert one_query["num_queries"] == 1
