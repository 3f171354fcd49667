"""Training-engine pieces: spec sections, optimizers, schedules, EMA, metrics, and whole runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pretrain._errors import PretrainError, SpecError
from pretrain._validate import ValidationContext
from pretrain.engine.ema import ModelEMA
from pretrain.engine.metrics import AccuracyMeter
from pretrain.engine.optim import build_optimizer, param_groups
from pretrain.engine.schedule import build_schedule
from pretrain.engine.spec import EMAConfig, ParamwiseConfig, TrainSection, validate_sections

# --------------------------------------------------------------------------- spec sections


def _sections(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    ctx = ValidationContext()
    out = validate_sections(raw, ctx)
    return out, [str(i) for i in ctx.issues]


def test_train_section_defaults_and_union() -> None:
    out, issues = _sections({"train": {"epochs": 3, "optimizer": {"type": "AdamW", "lr": 1e-3}},
                             "data": {"train": {"type": "Digits"}}})
    assert issues == []
    train = out["train"]
    assert isinstance(train, TrainSection)
    assert train.optimizer.type == "AdamW" and train.optimizer.weight_decay == 0.01
    assert train.schedule.type == "constant" and train.precision == "fp32"


@pytest.mark.parametrize(
    ("train", "loc", "fragment"),
    [
        ({"epochs": 0, "optimizer": {"type": "SGD", "lr": 0.1}}, "train.epochs", "greater than 0"),
        ({"epochs": 1, "optimizer": {"type": "SGD", "lr": 0.1, "weight_decy": 1}},
         "train.optimizer.weight_decy", "did you mean 'weight_decay'"),
        ({"epochs": 1, "optimizer": {"type": "Lion", "lr": 0.1}}, "train.optimizer", "SGD"),
        ({"epochs": 1, "optimizer": {"type": "SGD", "lr": 0.1}, "precision": "fp8"},
         "train.precision", "fp32"),
        ({"epochs": 4, "optimizer": {"type": "SGD", "lr": 0.1},
          "schedule": {"type": "multistep", "milestones": [2, 9]}},
         "train.schedule.milestones", "after the last epoch"),
        ({"epochs": 4, "optimizer": {"type": "SGD", "lr": 0.1},
          "schedule": {"type": "cosine", "warmup_epochs": 1, "warmup_steps": 5}},
         "train.schedule", "not both"),
        ({"epochs": 1, "optimizer": {"type": "SGD", "lr": 0.1}, "device": "gpu"},
         "train", "device must be"),
        ({"epochs": 1, "optimizer": {"type": "SGD", "lr": 0.1}, "best_metric": "accuracy/top3"},
         "train.best_metric", "eval.topk"),
    ],
)
def test_train_section_errors_have_paths(train: dict[str, Any], loc: str, fragment: str) -> None:
    _, issues = _sections({"train": train, "data": {"train": {"type": "Digits"}}})
    assert any(i.startswith(loc) and fragment in i for i in issues), issues


def test_train_without_data_is_reported() -> None:
    _, issues = _sections({"train": {"epochs": 1, "optimizer": {"type": "SGD", "lr": 0.1}}})
    assert any(i.startswith("data:") for i in issues)


# --------------------------------------------------------------------------- schedules


def test_warmup_then_cosine() -> None:
    cfg = TrainSection.model_validate(
        {"epochs": 10, "optimizer": {"type": "SGD", "lr": 1.0},
         "schedule": {"type": "cosine", "warmup_epochs": 1, "warmup_start_factor": 0.1,
                      "min_lr_ratio": 0.01}}
    ).schedule
    s = build_schedule(cfg, total_steps=100, steps_per_epoch=10)
    assert s.warmup_steps == 10
    assert s.factor(0) == pytest.approx(0.1)
    assert s.factor(5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(55) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way through the cosine
    assert s.factor(100) == pytest.approx(0.01)
    values = [s.factor(i) for i in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_step_and_multistep_decay_at_epoch_boundaries() -> None:
    step = TrainSection.model_validate(
        {"epochs": 9, "optimizer": {"type": "SGD", "lr": 1.0},
         "schedule": {"type": "step", "step_epochs": 3, "gamma": 0.5}}).schedule
    s = build_schedule(step, total_steps=90, steps_per_epoch=10)
    assert [s.factor(i) for i in (0, 29, 30, 59, 60)] == [1, 1, 0.5, 0.5, 0.25]
    multi = TrainSection.model_validate(
        {"epochs": 9, "optimizer": {"type": "SGD", "lr": 1.0},
         "schedule": {"type": "multistep", "milestones": [2, 5]}}).schedule
    m = build_schedule(multi, total_steps=90, steps_per_epoch=10)
    assert [m.factor(i) for i in (19, 20, 49, 50)] == pytest.approx([1, 0.1, 0.1, 0.01])


# --------------------------------------------------------------------------- optimizers


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


def test_paramwise_no_decay_on_norm_and_bias() -> None:
    groups = param_groups(_Tiny(), 0.1, 0.05, ParamwiseConfig(norm_decay_mult=0.0, bias_decay_mult=0.0))
    by_name = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert by_name == {"conv.weight": 0.05, "conv.bias": 0.0, "bn.weight": 0.0, "bn.bias": 0.0,
                       "fc.weight": 0.05, "fc.bias": 0.0}
    custom = param_groups(_Tiny(), 0.1, 0.05, ParamwiseConfig(custom_keys={"fc": {"lr_mult": 10}}))
    lrs = {n: g["lr"] for g in custom for n in g["names"]}
    assert lrs["fc.weight"] == pytest.approx(1.0) and lrs["conv.weight"] == pytest.approx(0.1)


def test_layer_decay_uses_backbone_depth() -> None:
    from pretrain._build import build_from_spec

    class WithBackbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = build_from_spec("backbone", {
                "type": "VisionTransformer",
                "arch": {"embed_dims": 16, "num_layers": 2, "num_heads": 2,
                         "feedforward_channels": 32},
                "img_size": 16, "patch_size": 8})
            self.head = nn.Linear(16, 3)

    model = WithBackbone()
    groups = param_groups(model, 1.0, 0.0, ParamwiseConfig(layer_decay_rate=0.5))
    lrs = {n: g["lr"] for g in groups for n in g["names"]}
    # 2 layers -> depths 0 (embeddings) .. 3 (head); lr = 0.5 ** (4 - d - 1)
    assert lrs["head.weight"] == 1.0
    assert lrs["backbone.cls_token"] == pytest.approx(0.125)
    assert min(lrs.values()) == pytest.approx(0.125)
    with pytest.raises(PretrainError, match="get_layer_depth"):
        param_groups(_Tiny(), 1.0, 0.0, ParamwiseConfig(layer_decay_rate=0.5))


@pytest.mark.parametrize("name", ["SGD", "AdamW", "Adam", "RMSprop"])
def test_build_optimizer_by_name(name: str) -> None:
    cfg = TrainSection.model_validate({"epochs": 1, "optimizer": {"type": name, "lr": 0.01}}).optimizer
    opt = build_optimizer(_Tiny(), cfg)
    assert type(opt).__name__ == name
    assert opt.param_groups[0]["base_lr"] == 0.01


# --------------------------------------------------------------------------- EMA, metrics


def test_ema_update_matches_formula() -> None:
    model = nn.Linear(2, 1)
    ema = ModelEMA(model, EMAConfig(decay=0.9))
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=1)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * model.weight)
    assert not ema.module.weight.requires_grad
    warm = ModelEMA(model, EMAConfig(decay=0.999, warmup=True))
    assert warm.decay() == pytest.approx(1 / 10)
    skip = ModelEMA(model, EMAConfig(decay=0.5, every_steps=2))
    w = skip.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    skip.update(model, step=1)
    assert torch.equal(skip.module.weight, w)


def test_accuracy_meter_topk_and_per_class() -> None:
    meter = AccuracyMeter((1, 2), 3, torch.device("cpu"))
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])
    labels = torch.tensor([0, 2, 2, 1])
    meter.update(scores[:2], labels[:2])
    meter.update(scores[2:], labels[2:])
    out = meter.compute()
    assert out["accuracy/top1"] == pytest.approx(50.0)  # samples 0 and 2
    assert out["accuracy/top2"] == pytest.approx(75.0)  # + sample 1
    assert out["num_samples"] == 4
    assert [r["accuracy"] for r in out["per_class"]] == [100.0, 0.0, 50.0]
    assert [r["count"] for r in out["per_class"]] == [1, 1, 2]
    with pytest.raises(PretrainError, match="top-5"):
        AccuracyMeter((1, 5), 3, torch.device("cpu"))
