"""``pretrain predict`` (class names from the run directory, agrees with ``pretrain eval``) and ``pretrain export``."""

from __future__ import annotations

import copy
import csv
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _engine_specs import TINY_RESNET, TINY_VIT, digits_data, tiny_spec, write_spec
from conftest import run_cli
from pretrain.assembly.assemble import build_node
from pretrain.engine.export import export_model
from pretrain.spec.validate import validate_spec

ENV = {"OMP_NUM_THREADS": "1"}
MOBILENET = {"type": "ImageClassifier", "in_channels": 3,
             "backbone": {"type": "MobileNetV2", "widen_factor": 0.25},
             "neck": {"type": "GlobalAveragePooling"},
             "head": {"type": "LinearClsHead", "num_classes": 7, "in_channels": 1280}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny ResNet trained for 30 steps on the digits, and its spec."""
    import pretrain

    tmp = tmp_path_factory.mktemp("predict")
    data = digits_data(batch_size=64, augment=False)
    spec = tiny_spec(TINY_RESNET, data=data, max_steps=30, optimizer={"type": "SGD", "lr": 0.1, "momentum": 0.9})
    path = write_spec(tmp / "spec.toml", spec)
    pretrain.train(path, run_dir=tmp / "run")
    return path, tmp / "run"


def _write_val_pngs(spec_path: Path, root: Path) -> list[str]:
    """The validation digits as PNG files, one folder per class (lossless: the same pixels eval sees)."""
    from pretrain.engine.api import prepare_spec

    spec = prepare_spec(spec_path)
    dataset = build_node(spec.sections["data"].val.dataset)
    names = [str(c) for c in dataset.classes]
    for i in range(len(dataset)):
        image, label = dataset[i]
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{i:04d}.png")
    return names


@pytest.mark.slow
def test_classes_json_and_predict_on_png_folder_matches_eval(trained: tuple[Path, Path], tmp_path: Path) -> None:
    spec, run = trained
    saved = json.loads((run / "classes.json").read_text())["classes"]
    names = _write_val_pngs(spec, tmp_path / "pngs")
    assert saved == names and len(saved) == 10

    pred = run_cli("predict", str(spec), "--weights", str(run), str(tmp_path / "pngs"), "--json", "--topk", "2",
                   "--batch-size", "50", env=ENV)
    assert pred.returncode == 0, pred.stderr[-3000:]
    rows = json.loads(pred.stdout)
    assert len(rows) == 359
    assert all(len(r["predictions"]) == 2 and r["predictions"][0]["score"] >= r["predictions"][1]["score"]
               for r in rows)
    hits = sum(Path(r["path"]).parent.name == r["predictions"][0]["class"] for r in rows)

    ev = run_cli("eval", str(spec), "--weights", str(run), "--json", env=ENV)
    assert ev.returncode == 0, ev.stderr[-3000:]
    accuracy = json.loads(ev.stdout)["accuracy/top1"]
    assert 100.0 * hits / len(rows) == pytest.approx(accuracy, abs=1e-9)
    assert accuracy > 30.0  # trained: well above chance, so the agreement means something


@pytest.mark.slow
def test_predict_csv_files_of_other_sizes_and_errors(trained: tuple[Path, Path], tmp_path: Path) -> None:
    spec, run = trained
    big = tmp_path / "big.jpg"  # RGB, another size: converted to grey, resized and centre-cropped to 8 px
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(big)
    proc = run_cli("predict", str(spec), "--weights", str(run / "checkpoints" / "last.safetensors"), str(big),
                   "--csv", "--topk", "3", env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (header, row) = list(csv.reader(io.StringIO(proc.stdout)))
    assert header == ["path", "label_1", "class_1", "score_1", "label_2", "class_2", "score_2", "label_3",
                      "class_3", "score_3"]
    assert row[0] == str(big) and row[2] in [str(i) for i in range(10)] and 0 < float(row[3]) <= 1

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    proc = run_cli("predict", str(spec), "--weights", str(run), str(bad), env=ENV)
    assert proc.returncode == 1 and "cannot read image" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("predict", str(spec), "--weights", str(run), str(tmp_path / "missing"), env=ENV)
    assert proc.returncode == 1 and "does not exist" in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
                    reason="pretrain[onnx] not installed")
@pytest.mark.parametrize(("name", "model", "channels", "size"), [
    ("resnet", TINY_RESNET, 1, 8), pytest.param("mobilenet", MOBILENET, 3, 32, marks=pytest.mark.slow),
    ("vit", TINY_VIT, 1, 8)])
def test_onnx_export_matches_pytorch_logits_with_dynamic_batch(
    name: str, model: dict, channels: int, size: int, tmp_path: Path,
) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    net = build_node(validate_spec({"model": copy.deepcopy(model)}).model).eval()
    out = export_model(net, tmp_path / f"{name}.onnx", fmt="onnx", channels=channels, size=(size, size))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and not isinstance(inp.shape[0], int)  # dynamic batch
    for batch in (1, 5):
        x = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8)
        with torch.no_grad():
            expected = net(x).numpy()
        (got,) = session.run(None, {inp.name: x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_export_cli_torchscript_and_exported_program(trained: tuple[Path, Path], tmp_path: Path, fmt: str) -> None:
    spec, run = trained
    out = tmp_path / ("model.pt" if fmt == "torchscript" else "model.pt2")
    proc = run_cli("export", str(spec), "--weights", str(run), "--format", fmt, "-o", str(out), env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from pretrain.engine.api import prepare_spec
    from pretrain.engine.export import load_for_export

    model, _ = load_for_export(prepare_spec(spec), run)
    loaded = torch.jit.load(str(out)) if fmt == "torchscript" else torch.export.load(str(out)).module()
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_export_without_input_size_is_a_clear_error(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _spec, run = trained
    raw = validate_spec(json.loads(json.dumps(tiny_spec(TINY_RESNET)))).raw
    bare = write_spec(tmp_path / "bare.toml", {"model": raw["model"]})
    proc = run_cli("export", str(bare), "--weights", str(run), "--format", "torchscript", "-o",
                   str(tmp_path / "m.pt"), env=ENV)
    assert proc.returncode == 1 and "--input-size" in proc.stderr, proc.stderr
    assert os.listdir(tmp_path) == ["bare.toml"]
