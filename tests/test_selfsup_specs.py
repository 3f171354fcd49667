"""The self-supervised example specs: MMPretrain's parameter counts, data requirements, LARS blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from pretrain import load_spec, validate_spec
from pretrain.registry.registry import get_registry
from pretrain_builtins.optimizers import LARS
from pretrain_builtins.transforms.multiview import MultiView

SPECS = Path(__file__).resolve().parents[1] / "examples" / "specs"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

#: MMPretrain 1.x's counts for its configs (total, trainable). MoCo v3: MMPretrain publishes
#: 42,890,752 trainable, counted before its init_weights freezes the sin-cos position embedding.
COUNTS = {
    "simclr_resnet50_imagenet": (27_968_832, 27_968_832),
    "mocov2_resnet50_imagenet": (55_933_312, 27_966_656),
    "mocov3_vit-small_imagenet": (84_266_752, 42_890_752 - 197 * 384),
    "byol_resnet50_imagenet": (68_024_448, 35_066_944),
    "simsiam_resnet50_imagenet": (38_199_360, 38_199_360),
    "barlowtwins_resnet50_imagenet": (174_535_744, 174_535_744),
}
DIGITS = ["simclr", "mocov2", "mocov3", "byol", "simsiam", "barlowtwins"]


def _validate(path: Path, *extra: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "pretrain", "validate", str(path), "--json", *extra],
                          capture_output=True, text=True, env=ENV, timeout=240, check=False)
    return json.loads(proc.stdout)


@pytest.mark.slow  # one `pretrain validate` process per recipe (ResNet-50s on the meta device)
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_imagenet_recipes_have_mmpretrains_parameter_counts(name: str):
    report = _validate(SPECS / f"{name}.toml")
    assert report["ok"], report["errors"]
    assert (report["params"], report["trainable_params"]) == COUNTS[name]


def _views(pipeline: list[dict[str, Any]]) -> int:
    """What a spec validator counts: the views MultiView makes (1 without one)."""
    for table in pipeline:
        if table.get("type") == "MultiView":
            return MultiView.views_from_params(table)
    return 1


def _data_issues(raw: dict[str, Any], world_size: int = 1) -> list[tuple[str, str]]:
    """The planned `pretrain validate` check, through the algorithm's public protocol."""
    registry = get_registry()
    cls = registry.load(registry.resolve("model", raw["model"]["type"]))
    issues: list[tuple[str, str]] = []
    for split in ("train", "val"):
        if split not in raw["data"]:
            continue
        batch = raw["data"]["batch_size"] if split == "train" else raw["data"].get("val_batch_size")
        issues += cls.data_issues(raw["model"], split=split, views=_views(raw["data"][split].get("pipeline", [])),
                                  batch_size=batch or raw["data"]["batch_size"], world_size=world_size)
    return issues


@pytest.mark.parametrize("algo", DIGITS)
def test_digits_specs_validate_and_meet_their_algorithms_data_requirements(algo: str):
    path = SPECS / f"{algo}_vit-tiny_digits.toml"
    raw = load_spec(str(path))
    validate_spec(raw, source=str(path))  # raises SpecError listing every issue
    assert _data_issues(raw) == []
    raw["data"]["val"]["pipeline"] = []
    assert [loc for loc, _ in _data_issues(raw)] == ["data.val.pipeline"]


def test_moco_queue_must_be_a_multiple_of_the_global_batch():
    raw = load_spec(str(SPECS / "mocov2_vit-tiny_digits.toml"))
    assert _data_issues(raw, world_size=2) == []  # 256 keys = 2 steps of 2 x 64
    issues = _data_issues(raw, world_size=3)
    assert [loc for loc, _ in issues] == ["model.queue_len"] and "192 keys" in issues[0][1]
    assert "holds only 256" in _data_issues(raw, world_size=8)[0][1]


@pytest.mark.parametrize("name", ["simclr_resnet50_imagenet", "byol_resnet50_imagenet",
                                  "barlowtwins_resnet50_imagenet"])
def test_lars_recipes_train_with_lars(name: str):
    """MMPretrain's LARS recipes select LARS through [train.optimizer] and validate as a whole."""
    spec = validate_spec(load_spec(str(SPECS / f"{name}.toml")))
    optimizer = spec.sections["train"].optimizer
    assert optimizer.type_name == "LARS" and optimizer.cls is LARS
    assert optimizer.params["exclude_bias_and_norm"] is True
    LARS([torch.nn.Parameter(torch.ones(2, 2))], **optimizer.params)  # every field is a LARS argument
