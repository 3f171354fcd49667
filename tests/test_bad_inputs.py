"""The bad-input corpus: specs, weights files, data folders and CLI arguments that must each fail cleanly.

Every case runs the real CLI in-process (``pretrain.cli.main``) and asserts the exit
code, that no traceback (and no "please report it") is printed, and that the message
names the file or spec field at fault. A case is a function that builds its inputs
under ``tmp`` and returns the command line; ``{tmp}`` in the expected strings is that
folder.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from _bad_input_helpers import assert_clear_error, cli
from _engine_specs import TINY_RESNET, tiny_spec, write_spec
from pretrain.engine import checkpoint as ckpt

Args = list[Any]


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], Args]
    named: tuple[str, ...]
    code: int


CASES: dict[str, Case] = {}


def case(name: str, *named: str, code: int = 1) -> Callable[[Callable[[Path], Args]], Callable[[Path], Args]]:
    def register(build: Callable[[Path], Args]) -> Callable[[Path], Args]:
        assert name not in CASES, name
        CASES[name] = Case(build, named, code)
        return build

    return register


# ----------------------------------------------------------------------------- helpers


def spec(tmp: Path, change: Callable[[dict[str, Any]], None] | None = None, name: str = "s.toml") -> Path:
    """The tiny digits spec (changed by ``change``) written to ``tmp/name``."""
    raw = tiny_spec(max_steps=2)
    if change is not None:
        change(raw)
    return write_spec(tmp / name, raw)


def text(tmp: Path, body: str | bytes, name: str = "s.toml") -> Path:
    path = tmp / name
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body, encoding="utf-8")
    return path


def model_only(**backbone: Any) -> str:
    import tomli_w

    head = {"type": "LinearClsHead", "num_classes": 10, "in_channels": 192}
    return tomli_w.dumps({"model": {"type": "ImageClassifier", "backbone": backbone, "head": head}})


def weights(tmp: Path, name: str = "w.safetensors", change: Callable[[dict[str, torch.Tensor]], None] | None = None,
            raw: Callable[[bytearray], bytes] | None = None) -> Path:
    """Weights of the tiny model, saved as pretrain saves them (with the checksum)."""
    import pretrain

    state = dict(pretrain.build_model({"model": copy.deepcopy(TINY_RESNET)}).state_dict())
    if change is not None:
        change(state)
    path = tmp / name
    ckpt.save_tensors(path, state, {})
    if raw is not None:
        path.write_bytes(raw(bytearray(path.read_bytes())))
    return path


def evaluate(tmp: Path, w: Path | str) -> Args:
    return ["eval", spec(tmp), "--weights", w]


def images(folder: Path, n: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")


def folder_spec(tmp: Path, root: Path, **fields: Any) -> Args:
    def change(raw: dict[str, Any]) -> None:
        raw["data"]["train"] = {"type": "ImageFolder", "root": str(root), "image_size": 8, **fields}
    return ["train", spec(tmp, change), "--run-dir", tmp / "run"]


def pretrained(tmp: Path, checkpoint: str) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        raw["model"]["backbone"]["init"] = [{"type": "Pretrained", "checkpoint": checkpoint}]
    return change


def setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """``raw[a][b][c] = value`` for ``path`` "a.b.c"."""
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return change


# ----------------------------------------------------------------------------- spec files


@case("spec-missing", "{tmp}/nope.toml", "does not exist")
def _(tmp: Path) -> Args:
    return ["validate", tmp / "nope.toml"]


@case("spec-is-a-directory", "{tmp}/dir.toml is a directory")
def _(tmp: Path) -> Args:
    (tmp / "dir.toml").mkdir()
    return ["validate", tmp / "dir.toml"]


@case("spec-is-a-device", "/dev/null is not a regular file")
def _(tmp: Path) -> Args:
    return ["validate", "/dev/null"]


@case("spec-unknown-suffix", "s.yaml", "must be a .toml or .json file")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, "model: {}\n", "s.yaml")]


@case("spec-toml-syntax", "{tmp}/s.toml", "TOML syntax error", "line 2")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, '[model]\ntype = "ImageClassifier\n')]


@case("spec-json-syntax", "{tmp}/s.json", "JSON syntax error at line 1")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, '{"model": {"type": }}', "s.json")]


@case("spec-not-utf8", "s.toml is not valid UTF-8", "line 2, column 9", "save it as UTF-8")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, b'[model]\nname = "\xff\xfe"\n')]


@case("spec-utf16", "s.toml is UTF-16 encoded")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, '[model]\ntype = "ImageClassifier"\n'.encode("utf-16"))]


@case("spec-deep-toml-arrays", "s.toml nests tables/lists more than 32 levels deep")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, "a = " + "[" * 5000 + "]" * 5000 + "\n")]


@case("spec-deep-json", "s.json nests tables/lists more than 32 levels deep")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, '{"a": ' + "[" * 5000 + "]" * 5000 + "}", "s.json")]


@case("spec-deep-inline-tables", "s.toml nests tables/lists more than 32 levels deep", "(at a.a.a.a.a.a...)")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, "a = " + "{a = " * 40 + "1" + "}" * 40 + "\n")]


@case("spec-dotted-key-50k-parts", "s.toml line 3: a dotted key with more than 32 parts")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, "[model]\ntype = 'X'\n" + ".".join(["k"] * 50_000) + " = 1\n")]


@case("spec-deep-table-header", "s.toml line 1: a dotted key with more than 32 parts")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, "[" + ".".join(["t"] * 40) + "]\nx = 1\n")]


@case("spec-symlink-loop", "{tmp}/a.toml is a symbolic link that loops back on itself")
def _(tmp: Path) -> Args:
    (tmp / "a.toml").symlink_to("b.toml")
    (tmp / "b.toml").symlink_to("a.toml")
    return ["validate", tmp / "a.toml"]


@case("spec-too-large", "{tmp}/s.toml is 11.0 MiB", "at most 10 MiB")
def _(tmp: Path) -> Args:
    with open(tmp / "s.toml", "wb") as fh:
        fh.truncate(11 * 2**20)
    return ["validate", tmp / "s.toml"]


@case("spec-duplicate-json-key", "s.json repeats key(s) 'lr'")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, '{"model": {"type": "ImageClassifier"}, "train": {"epochs": 1, '
                                  '"optimizer": {"type": "SGD", "lr": 0.1, "lr": 10}}}', "s.json")]


@case("spec-top-level-array", "s.json", "the top level of a spec must be a table/object")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, "[1, 2]", "s.json")]


@case("spec-empty", "model: required table is missing")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, "")]


@case("extends-missing", "extends[0]", "base spec 'base.toml' not found")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, 'extends = ["base.toml"]\n')]


@case("extends-cycle", "cycle in extends: s.toml -> b.toml -> s.toml")
def _(tmp: Path) -> Args:
    text(tmp, 'extends = "s.toml"\n', "b.toml")
    return ["validate", text(tmp, 'extends = "b.toml"\n')]


@case("extends-not-paths", "extends: must be a path or a list of paths")
def _(tmp: Path) -> Args:
    return ["validate", text(tmp, "extends = 3\n")]


@case("extends-too-large", "{tmp}/big.toml is 200.0 MiB", "at most 10 MiB")
def _(tmp: Path) -> Args:
    with open(tmp / "big.toml", "wb") as fh:
        fh.truncate(200 * 2**20)
    return ["validate", text(tmp, 'extends = "big.toml"\n')]


@case("extends-too-many-files", "extends:", "more than 64 files")
def _(tmp: Path) -> Args:
    text(tmp, "[model]\n", "leaf.toml")
    for level in range(8):  # each level lists the one below twice: 2**8 loads
        below = "leaf.toml" if level == 0 else f"l{level - 1}.toml"
        text(tmp, f'extends = ["{below}", "{below}"]\n', f"l{level}.toml")
    return ["validate", tmp / "l7.toml"]


@case("extends-a-directory", "is a directory, not a spec file")
def _(tmp: Path) -> Args:
    (tmp / "bases").mkdir()
    return ["validate", text(tmp, 'extends = "bases"\n')]


# ----------------------------------------------------------------------------- spec fields


@case("unknown-top-level-table", "modle", "did you mean 'model'")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, lambda r: r.update(modle=r["model"]))]


@case("unknown-type", "model.backbone.type", "ResNet_CIFR", "did you mean")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("model.backbone.type", "ResNet_CIFR"))]


@case("unknown-field", "model.backbone.depht", "did you mean 'depth'")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("model.backbone.depht", 18))]


@case("bool-for-int", "model.head.num_classes", "expected a number, got the boolean true")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("model.head.num_classes", True))]


@case("bool-for-float", "train.optimizer.lr", "boolean true")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.optimizer.lr", True))]


@case("bool-in-list", "eval.topk[0]", "boolean true")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("eval.topk", [True]))]


@case("lr-inf", "train.optimizer.lr", "finite number")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.optimizer.lr", float("inf")))]


@case("lr-nan", "train.optimizer.lr")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.optimizer.lr", float("nan")))]


@case("momentum-inf", "train.optimizer.momentum", "finite number")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.optimizer.momentum", float("inf")))]


@case("weight-decay-inf", "train.optimizer.weight_decay", "finite number")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.optimizer.weight_decay", float("inf")))]


@case("grad-clip-inf", "train.grad_clip", "finite number")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.grad_clip", float("inf")))]


@case("component-float-inf", "model.head.loss.loss_weight", "must be a finite number, got inf")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("model.head.loss", {"type": "CrossEntropyLoss", "loss_weight": float("inf")}))]


@case("init-std-nan", "model.backbone.init[0].std", "(got nan)")
def _(tmp: Path) -> Args:
    rule = {"type": "Normal", "layer": "Conv2d", "std": float("nan")}
    return ["validate", spec(tmp, setter("model.backbone.init", [rule]))]


@case("epochs-zero", "train.epochs", "greater than 0")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.epochs", 0))]


@case("epochs-absurd", "train.epochs", "less than or equal to 1000000")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.epochs", 10**9))]


@case("batch-size-absurd", "data.batch_size", "less than or equal to 65536")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("data.batch_size", 10**9))]


@case("image-size-absurd", "data.image_size", "less than or equal to 16384")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("data.image_size", 10**6))]


@case("num-workers-absurd", "data.num_workers", "less than or equal to 256")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("data.num_workers", 100_000))]


@case("grad-accum-absurd", "train.grad_accum", "less than or equal to 65536")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.grad_accum", 10**7))]


@case("cpu-threads-absurd", "train.cpu_threads", "less than or equal to 4096")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.cpu_threads", 10**6))]


@case("seed-1e20", "train.seed", "is far too large (got 1e+20)")
def _(tmp: Path) -> Args:
    spec(tmp, name="base.toml")  # TOML reads 1e20 as a float, beyond any integer field
    return ["validate", text(tmp, 'extends = "base.toml"\n[train]\nseed = 1e20\n')]


@case("seed-negative", "train.seed", "greater than or equal to 0")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.seed", -1))]


@case("eval-topk-above-classes", "eval.topk", "top-50", "10 classes")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("eval.topk", [1, 50]))]


@case("head-topk-above-classes", "model.head.topk", "num_classes is 10")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("model.head.topk", [1, 20]))]


@case("best-metric-unknown", "train.best_metric", "did you mean 'accuracy/top1'")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.best_metric", "accuracy/top11"))]


@case("device-unknown", "train.device", "device must be auto, cpu, cuda, cuda:N or mps")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("train.device", "tpu"))]


@case("train-without-data", "data", "required by [train]")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, lambda r: r.pop("data"))]


@case("dataset-without-type", "data.train.type", "missing; choose a dataset type")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, lambda r: r["data"]["train"].pop("type"))]


@case("vit-1e6-layers", "model.backbone.arch", "num_layers = 1000000 is above 256")
def _(tmp: Path) -> Args:
    arch = {"embed_dims": 192, "num_layers": 1e6, "num_heads": 3, "feedforward_channels": 768}
    return ["validate", text(tmp, model_only(type="VisionTransformer", arch=arch))]


@case("stacked-head-too-deep", "model.head.mid_channels", "at most 256 items")
def _(tmp: Path) -> Args:
    head = {"type": "StackedLinearClsHead", "num_classes": 10, "in_channels": 32, "mid_channels": [8] * 300}
    return ["validate", spec(tmp, setter("model.head", head))]


@case("model-above-param-ceiling", "model:", "parameters", "above the ceiling of 20 B", "--max-params")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, setter("model.backbone.base_channels", 1_000_000))]


@case("pretrained-missing-file", "model.backbone.init[0].checkpoint", "the file '{tmp}/gone.safetensors' does not exist")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, pretrained(tmp, str(tmp / "gone.safetensors")))]


@case("pretrained-directory", "model.backbone.init[0].checkpoint", "is a directory")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, pretrained(tmp, str(tmp)))]


@case("pretrained-empty-path", "model.backbone.init[0].checkpoint", "is empty",
      "--set model.backbone.init.0.checkpoint=PATH.safetensors")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp, pretrained(tmp, ""))]


@case("pretrained-bit-flipped", "model.backbone.init[0]", "{tmp}/b.safetensors", "checksum mismatch")
def _(tmp: Path) -> Args:
    def flip(data: bytearray) -> bytes:
        data[-9] ^= 0x10
        return bytes(data)
    weights(tmp, "b.safetensors", change=lambda s: _keep_prefix(s, "backbone."), raw=flip)
    return ["train", spec(tmp, pretrained(tmp, str(tmp / "b.safetensors"))), "--run-dir", tmp / "run"]


@case("pretrained-nan", "model.backbone.init[0]", "tensor 'conv1.weight' holds 1 NaN or infinite value(s)")
def _(tmp: Path) -> Args:
    def poison(state: dict[str, torch.Tensor]) -> None:
        _keep_prefix(state, "backbone.")
        state["conv1.weight"].view(-1)[0] = float("nan")
    weights(tmp, "b.safetensors", change=poison)
    return ["train", spec(tmp, pretrained(tmp, str(tmp / "b.safetensors"))), "--run-dir", tmp / "run"]


@case("pretrained-garbage-pth", "model.backbone.init[0]", "'{tmp}/b.pth' is not a PyTorch checkpoint")
def _(tmp: Path) -> Args:
    text(tmp, b"\x00\x01garbage" * 64, "b.pth")
    return ["train", spec(tmp, pretrained(tmp, str(tmp / "b.pth"))), "--run-dir", tmp / "run"]


def _keep_prefix(state: dict[str, torch.Tensor], prefix: str) -> None:
    for key in list(state):
        value = state.pop(key)
        if key.startswith(prefix):
            state[key[len(prefix):]] = value


# ----------------------------------------------------------------------------- CLI arguments


@case("set-without-equals", "--set model.head.num_classes", "expected KEY=VALUE")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp), "--set", "model.head.num_classes"]


@case("set-non-ascii-digit-index", "--set model.head.topk.²=1", "no list item '²'")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp), "--set", "model.head.topk.²=1"]


@case("set-huge-index", "no list item '99999999999999999999999'")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp), "--set", "model.head.topk.99999999999999999999999=1"]


@case("set-index-out-of-range", "no list item '7' in model.head.topk (it has 2 item(s)")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp), "--set", "model.head.topk.7=1"]


@case("set-through-a-scalar", "model.head.num_classes is not a table")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp), "--set", "model.head.num_classes.x=1"]


@case("set-too-many-parts", "the key has 40 parts")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp), "--set", ".".join(["k"] * 40) + "=1"]


@case("set-too-deep-value", "the value nests too deeply")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp), "--set", "model.x=" + "[" * 2000 + "]" * 2000]


@case("set-shape-mismatch", "model.head.in_channels", "is 256", "outputs 32 channels")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp), "--set", "model.head.in_channels=256"]


@case("input-size-garbage", "--input-size", "'abc'")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp), "--input-size", "abc"]


@case("input-size-zero", "--input-size", "from 1 to 16384")
def _(tmp: Path) -> Args:
    return ["validate", spec(tmp), "--input-size", "0"]


@case("max-params-garbage", "PRETRAIN_MAX_PARAMS = 'lots'", "is not a parameter count")
def _(tmp: Path) -> Args:
    return ["--max-params", "lots", "validate", spec(tmp)]


@case("eval-without-weights", "--weights", code=2)
def _(tmp: Path) -> Args:
    return ["eval", spec(tmp)]


@case("run-dir-is-a-file", "{tmp}/f", "is a file")
def _(tmp: Path) -> Args:
    (tmp / "f").write_text("x")
    return ["train", spec(tmp), "--run-dir", tmp / "f" / "run"]


@case("run-dir-not-writable", "cannot use the run directory /sys/pretrain-corpus-run", "--run-dir")
def _(tmp: Path) -> Args:
    return ["train", spec(tmp), "--run-dir", "/sys/pretrain-corpus-run"]  # EPERM/EROFS/EACCES, even as root


@case("run-dir-with-foreign-files", "{tmp}/run", "notes.txt", "not a run's")
def _(tmp: Path) -> Args:
    (tmp / "run").mkdir()
    (tmp / "run" / "notes.txt").write_text("mine")
    return ["train", spec(tmp), "--run-dir", tmp / "run"]


@case("resume-without-state", "{tmp}/run", "last.safetensors", "last.state.safetensors", "is missing")
def _(tmp: Path) -> Args:
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    weights(tmp / "run" / "checkpoints", "last.safetensors")
    return ["train", spec(tmp), "--run-dir", tmp / "run", "--resume"]


@case("resume-from-a-damaged-state-header", "cannot resume {tmp}/run", "state file is damaged")
def _(tmp: Path) -> Args:
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "last.state.safetensors").write_bytes(b"\x00" * 64)
    return ["train", spec(tmp), "--run-dir", tmp / "run", "--resume"]


@case("device-unavailable", "device 'mps' was requested but MPS is not available")
def _(tmp: Path) -> Args:
    return ["train", spec(tmp), "--run-dir", tmp / "run", "--device", "mps"]


# ----------------------------------------------------------------------------- weights files


@case("weights-missing", "{tmp}/none.safetensors does not exist")
def _(tmp: Path) -> Args:
    return evaluate(tmp, tmp / "none.safetensors")


@case("weights-run-dir-without-weights", "{tmp}/empty holds no weights")
def _(tmp: Path) -> Args:
    (tmp / "empty").mkdir()
    return evaluate(tmp, tmp / "empty")


@case("weights-dev-zero", "/dev/zero is not a regular file")
def _(tmp: Path) -> Args:
    return evaluate(tmp, "/dev/zero")


@case("weights-empty-file", "{tmp}/w.safetensors is truncated or corrupt: it is empty")
def _(tmp: Path) -> Args:
    return evaluate(tmp, text(tmp, b"", "w.safetensors"))


@case("weights-torch-zip", "{tmp}/w.pth is a PyTorch checkpoint (torch.save zip archive)", "convert-weights")
def _(tmp: Path) -> Args:
    torch.save({"w": torch.zeros(2)}, tmp / "w.pth")
    return evaluate(tmp, tmp / "w.pth")


@case("weights-legacy-pickle", "{tmp}/w.pth is a pickled PyTorch checkpoint")
def _(tmp: Path) -> Args:
    torch.save({"w": torch.zeros(2)}, tmp / "w.pth", _use_new_zipfile_serialization=False)
    return evaluate(tmp, tmp / "w.pth")


@case("weights-random-bytes", "{tmp}/w.safetensors is not a safetensors file")
def _(tmp: Path) -> Args:
    return evaluate(tmp, text(tmp, bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
                              "w.safetensors"))


@case("weights-truncated", "{tmp}/w.safetensors is truncated or corrupt", "the tensors need")
def _(tmp: Path) -> Args:
    return evaluate(tmp, weights(tmp, raw=lambda d: bytes(d[:-100])))


@case("weights-bit-flipped", "{tmp}/w.safetensors", "checksum mismatch")
def _(tmp: Path) -> Args:
    def flip(data: bytearray) -> bytes:
        data[-3] ^= 0x04
        return bytes(data)
    return evaluate(tmp, weights(tmp, raw=flip))


@case("weights-header-not-json", "{tmp}/w.safetensors", "the header is not valid JSON")
def _(tmp: Path) -> Args:
    return evaluate(tmp, text(tmp, struct.pack("<Q", 8) + b"{not js}", "w.safetensors"))


@case("weights-header-entry-malformed", "{tmp}/w.safetensors", "the header entry of tensor 'a' is malformed")
def _(tmp: Path) -> Args:
    header = b'{"a": {"dtype": "F32", "shape": [1]}}'
    return evaluate(tmp, text(tmp, struct.pack("<Q", len(header)) + header, "w.safetensors"))


@case("weights-header-length-beyond-file", "{tmp}/w.safetensors is truncated or corrupt", "the header claims 4096")
def _(tmp: Path) -> Args:
    return evaluate(tmp, text(tmp, struct.pack("<Q", 4096) + b'{"a": 1}', "w.safetensors"))


@case("weights-trailing-bytes", "{tmp}/w.safetensors", "bytes follow the last tensor")
def _(tmp: Path) -> Args:
    return evaluate(tmp, weights(tmp, raw=lambda d: bytes(d) + b"\x00" * 16))


@case("weights-unknown-dtype", "{tmp}/w.safetensors is truncated or corrupt")
def _(tmp: Path) -> Args:
    header = b'{"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}'
    return evaluate(tmp, text(tmp, struct.pack("<Q", len(header)) + header + b"\x00" * 4, "w.safetensors"))


@case("weights-of-another-model", "{tmp}/w.safetensors", "do not fit this model", "missing")
def _(tmp: Path) -> Args:
    ckpt.save_tensors(tmp / "w.safetensors", {"fc.weight": torch.zeros(2, 2)}, {})
    return evaluate(tmp, tmp / "w.safetensors")


@case("weights-int8", "{tmp}/w.safetensors", "tensor 'backbone.conv1.weight' is int8", "float32")
def _(tmp: Path) -> Args:
    def quantise(state: dict[str, torch.Tensor]) -> None:
        state["backbone.conv1.weight"] = state["backbone.conv1.weight"].to(torch.int8)
    return evaluate(tmp, weights(tmp, change=quantise))


@case("weights-inf", "{tmp}/w.safetensors", "tensor 'head.fc.bias' holds 1 NaN or infinite value(s)")
def _(tmp: Path) -> Args:
    def poison(state: dict[str, torch.Tensor]) -> None:
        state["head.fc.bias"][2] = float("inf")
    return evaluate(tmp, weights(tmp, change=poison))


# ----------------------------------------------------------------------------- data folders


@case("image-folder-missing-root", "ImageFolder root '{tmp}/nowhere' does not exist")
def _(tmp: Path) -> Args:
    return folder_spec(tmp, tmp / "nowhere")


@case("image-folder-root-is-a-file", "ImageFolder root '{tmp}/f' is a file")
def _(tmp: Path) -> Args:
    (tmp / "f").write_text("x")
    return folder_spec(tmp, tmp / "f")


@case("image-folder-no-classes", "ImageFolder '{tmp}/imgs' has no class sub-folders")
def _(tmp: Path) -> Args:
    (tmp / "imgs").mkdir()
    return folder_spec(tmp, tmp / "imgs")


@case("image-folder-empty-class", "ImageFolder class folder '{tmp}/imgs/dog' holds no images")
def _(tmp: Path) -> Args:
    images(tmp / "imgs" / "cat")
    (tmp / "imgs" / "dog").mkdir()
    return folder_spec(tmp, tmp / "imgs")


@case("image-folder-unreadable-image", "cannot read image '{tmp}/imgs/cat/bad.png'", "skip_unreadable")
def _(tmp: Path) -> Args:
    images(tmp / "imgs" / "cat")
    (tmp / "imgs" / "cat" / "bad.png").write_bytes(b"not a png")
    return folder_spec(tmp, tmp / "imgs")


@case("image-folder-unknown-class", "ImageFolder '{tmp}/imgs' has no folder for class(es) ['cow']")
def _(tmp: Path) -> Args:
    images(tmp / "imgs" / "cat")
    return folder_spec(tmp, tmp / "imgs", classes=["cat", "cow"])


@case("image-folder-dangling-link", "cannot read image '{tmp}/imgs/cat/gone.png'")
def _(tmp: Path) -> Args:
    images(tmp / "imgs" / "cat")
    (tmp / "imgs" / "cat" / "gone.png").symlink_to(tmp / "deleted.png")
    return folder_spec(tmp, tmp / "imgs")


@case("cifar-missing-file", "data.train: CIFAR-10 not found", "'{tmp}/cifar/cifar-10-batches-py/data_batch_3'", "download = true")
def _(tmp: Path) -> Args:
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5", "batches.meta"):
        (folder / name).write_bytes(b"")

    def change(raw: dict[str, Any]) -> None:
        raw["data"]["train"] = {"type": "CIFAR10", "root": str(tmp / "cifar"), "channels": 1}
    return ["train", spec(tmp, change), "--run-dir", tmp / "run"]


# ----------------------------------------------------------------------------- convert-weights


@case("convert-garbage-pth", "{tmp}/g.pth is not a readable PyTorch checkpoint")
def _(tmp: Path) -> Args:
    text(tmp, b"\x00garbage" * 100, "g.pth")
    return ["convert-weights", tmp / "g.pth", tmp / "out.safetensors", "--from", "torchvision", "--arch", "resnet18"]


@case("convert-garbage-safetensors", "{tmp}/g.safetensors is not a safetensors file")
def _(tmp: Path) -> Args:
    text(tmp, b"garbage!" * 100, "g.safetensors")
    return ["convert-weights", tmp / "g.safetensors", tmp / "out.safetensors", "--from", "torchvision",
            "--arch", "resnet18"]


@case("convert-missing-source", "{tmp}/none.pth: no such file")
def _(tmp: Path) -> Args:
    return ["convert-weights", tmp / "none.pth", tmp / "out.safetensors", "--from", "torchvision", "--arch", "resnet18"]


# ----------------------------------------------------------------------------- the test


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Recorded by monkeypatch, so the value `--max-params` writes is undone afterwards.
    monkeypatch.setenv("PRETRAIN_MAX_PARAMS", "20B")
    monkeypatch.chdir(tmp_path)
    item = CASES[name]
    args = item.build(tmp_path)
    res = cli(capsys, *args)
    assert_clear_error(res, *(s.replace("{tmp}", str(tmp_path)) for s in item.named), code=item.code)
