"""Training-engine pieces: spec sections, optimizers, schedules, EMA, metrics, and whole runs."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pretrain.engine.ema import ModelEMA
from pretrain.engine.optim import build_optimizer, param_groups
from pretrain.engine.schedule import build_schedule
from pretrain.errors import PretrainError
from pretrain.spec.sections import EMAConfig, ParamwiseConfig, TrainSection, validate_sections
from pretrain.spec.validate import ValidationContext

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
    assert train.optimizer.type_name == "AdamW" and train.optimizer.params["weight_decay"] == 0.01
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
    assert all(a >= b for a, b in itertools.pairwise(values))


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
    from pretrain.assembly.assemble import build_from_spec

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


@pytest.mark.parametrize("name", ["SGD", "AdamW", "Adam", "RMSprop", "LARS", "Lamb"])
def test_build_optimizer_by_name(name: str) -> None:
    out, issues = _sections({"train": {"epochs": 1, "optimizer": {"type": name, "lr": 0.01}},
                             "data": {"train": {"type": "Digits"}}})
    assert issues == []
    opt = build_optimizer(_Tiny(), out["train"].optimizer)
    assert type(opt).__name__ == name and isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["base_lr"] == 0.01


def test_optimizers_are_a_registered_kind() -> None:
    """A third-party optimizer registers like any component; its fields validate with spec paths."""
    import pretrain

    class Sign(torch.optim.SGD):
        """signSGD.

        Args:
            params: Parameter groups.
            lr: Learning rate.
        """

        def __init__(self, params, *, lr: float) -> None:  # type: ignore[no-untyped-def]
            super().__init__(params, lr=lr)

    registry = pretrain.get_registry()
    registry.register("optimizer", "Sign", Sign)
    try:
        out, issues = _sections({"train": {"epochs": 1, "optimizer": {"type": "Sign", "lr": 0.1, "momentum": 1}},
                                 "data": {"train": {"type": "Digits"}}})
        assert issues == ["train.optimizer.momentum: unknown field (accepted fields: lr)"]
        out, issues = _sections({"train": {"epochs": 1, "optimizer": {"type": "Sign", "lr": 0.1}},
                                 "data": {"train": {"type": "Digits"}}})
        assert issues == [] and type(build_optimizer(_Tiny(), out["train"].optimizer)).__name__ == "Sign"
        with pytest.raises(TypeError, match="not a torch.optim.Optimizer subclass"):
            registry.register("optimizer", "NotOne", nn.Linear)
    finally:
        registry.unregister("optimizer", "Sign")


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


def test_accuracy_metric_topk_and_per_class() -> None:
    from pretrain.components import MetricContext, MetricInputs
    from pretrain.engine.metrics import MetricSet
    from pretrain.spec.context import ValidationContext

    def metric_set(topk):
        nodes = ValidationContext().components("metric", [{"type": "Accuracy"}], "eval.metrics")
        return MetricSet(nodes, MetricContext(num_classes=3, topk=topk, device=torch.device("cpu")))

    metrics = metric_set((1, 2))
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])
    labels = torch.tensor([0, 2, 2, 1])
    metrics.update(MetricInputs(scores=scores[:2], labels=labels[:2]))
    metrics.update(MetricInputs(scores=scores[2:], labels=labels[2:]))
    out = metrics.compute()
    assert out.scalars["accuracy/top1"] == pytest.approx(50.0)  # samples 0 and 2
    assert out.scalars["accuracy/top2"] == pytest.approx(75.0)  # + sample 1
    assert out.per_class["accuracy"] == [100.0, 0.0, 50.0]
    assert out.per_class["count"] == [1, 1, 2]
    with pytest.raises(PretrainError, match="top-5"):
        metric_set((1, 5))


# --------------------------------------------------------------------------- whole runs

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from _engine_specs import TINY_VIT, digits_data, tiny_spec, write_spec  # noqa: E402
from pretrain import hookimpl  # noqa: E402
from pretrain.engine import checkpoint as ckpt  # noqa: E402
from pretrain.engine.trainer import NonFiniteLossError, Trainer  # noqa: E402
from pretrain.registry.plugins import get_plugin_manager  # noqa: E402
from pretrain.spec.validate import validate_spec  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pretrain.cli", *args], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=300, check=False)


def _fit(spec: dict[str, Any], run_dir: Path, **kw: Any) -> tuple[Trainer, dict[str, Any]]:
    trainer = Trainer(validate_spec(spec), run_dir, live=False, **kw)
    return trainer, trainer.fit()


class _Recorder:
    """A hook plugin that records what the trainer reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @hookimpl
    def pretrain_train_start(self, trainer: Any) -> None:
        self.events.append(("start", trainer.state.step))

    @hookimpl
    def pretrain_after_step(self, step: int, loss: float) -> None:
        self.events.append(("step", (step, loss)))

    @hookimpl
    def pretrain_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.events.append(("epoch", (epoch, dict(metrics))))

    @hookimpl
    def pretrain_train_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        self.events.append(("end", (trainer.state.step, dict(metrics))))


def test_hooks_are_called_at_their_points(tmp_path: Path) -> None:
    recorder = _Recorder()
    pm = get_plugin_manager()
    pm.register(recorder, name="test-recorder")
    try:
        _fit(tiny_spec(TINY_VIT, epochs=2, max_steps=14, data=digits_data(batch_size=64)),
             tmp_path / "run")
    finally:
        pm.unregister(recorder)
    kinds = [k for k, _ in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    steps = [v for k, v in recorder.events if k == "step"]
    assert [s for s, _ in steps] == list(range(1, 15))  # 23 steps/epoch, stopped at 14
    assert all(math.isfinite(loss) for _, loss in steps)
    epochs = [v for k, v in recorder.events if k == "epoch"]
    assert [e for e, _ in epochs] == [1]  # max_steps ends the run inside epoch 1
    assert "accuracy/top1" in epochs[0][1] and epochs[0][1]["step"] == 14
    assert recorder.events[-1][1][0] == 14
    assert not pm.is_registered(recorder)


def test_model_after_optimizer_step_gets_the_global_step_and_the_run_length(tmp_path: Path) -> None:
    """The momentum-teacher hook: called once per optimizer step, after it, with explicit counts."""
    trainer = Trainer(validate_spec(tiny_spec(TINY_VIT, epochs=2, max_steps=5, grad_accum=2,
                                              data=digits_data(batch_size=64))),
                      tmp_path / "run", live=False)
    trainer.setup()
    calls: list[tuple[int, int, bool]] = []
    first = next(trainer.model.parameters())
    before = first.detach().clone()

    def after_optimizer_step(*, step: int, total_steps: int) -> None:
        # The optimizer has already stepped (weights moved) and gradients are cleared.
        calls.append((step, total_steps, not torch.equal(first, before) and first.grad is None))
        before.copy_(first.detach())

    trainer.model.after_optimizer_step = after_optimizer_step  # type: ignore[method-assign]
    trainer.fit()
    assert calls == [(s, 5, True) for s in range(1, 6)]


def test_run_dir_contents_and_eval_weights(tmp_path: Path) -> None:
    trainer, record = _fit(
        tiny_spec(epochs=2, channels_last=True, ema={"decay": 0.5},
                  schedule={"type": "multistep", "milestones": [1]},
                  paramwise={"norm_decay_mult": 0.0}, data=digits_data(batch_size=64)),
        tmp_path / "run")
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        assert {"epoch", "train_loss", "lr", "accuracy/top1", "accuracy/top5"} <= r.keys()
        assert 0.0 <= r["accuracy/top1"] <= r["accuracy/top5"] <= 100.0
    assert lines[1]["lr"] == pytest.approx(0.05 * 0.1)  # multistep decay after epoch 1
    assert record == lines[-1]
    assert (run / "spec.toml").read_text().count("[model.backbone]") == 1
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = ckpt.read_metadata(run / "checkpoints" / "last.safetensors")
    assert meta["weights"] == "ema" and meta["epoch"] == "2"
    weights, _ = ckpt.load_tensors(run / "checkpoints" / "last.safetensors")
    ema = trainer.ema
    assert ema is not None
    assert all(torch.equal(weights[k], v) for k, v in ema.state_dict().items())


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    spec = tiny_spec(TINY_VIT, epochs=1, data=digits_data(batch_size=64))
    _fit(spec, run)
    kept = (run / "checkpoints" / "last.state.safetensors").read_bytes()
    # Continue for another epoch with an absurd learning rate: the loss overflows.
    spec["train"].update(epochs=2, optimizer={"type": "SGD", "lr": 1e30})
    with pytest.raises(NonFiniteLossError) as info:
        _fit(spec, run, resume=True)
    message = str(info.value)
    step = int(re.search(r"at step (\d+) ", message).group(1))  # type: ignore[union-attr]
    assert 24 <= step <= 26, message  # epoch 1 has 23 steps; step 24 explodes the weights
    assert "epoch 2" in message and "last good checkpoint" in message
    assert (run / "checkpoints" / "last.state.safetensors").read_bytes() == kept
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_non_finite_loss_exits_1_from_the_cli(tmp_path: Path) -> None:
    spec = tiny_spec(TINY_VIT, epochs=1, data=digits_data(batch_size=64))
    # A finite weight (an infinite one is a validation error) that overflows float32 at once.
    spec["model"]["head"]["loss"] = {"type": "CrossEntropyLoss", "loss_weight": 1e300}
    proc = _cli("train", str(write_spec(tmp_path / "s.toml", spec)), "--run-dir",
                str(tmp_path / "run"), "--plain")
    assert proc.returncode == 1
    assert "the loss became inf at step 1 " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.safetensors").exists()


def test_grad_accumulation_equals_the_large_batch(tmp_path: Path) -> None:
    def weights(batch: int, accum: int, name: str) -> dict[str, torch.Tensor]:
        data = digits_data(batch_size=batch, augment=False)
        trainer, _ = _fit(tiny_spec(TINY_VIT, data=data, max_steps=6, grad_accum=accum,
                                    optimizer={"type": "SGD", "lr": 0.1, "momentum": 0.9}),
                          tmp_path / name)
        return trainer.model.state_dict()

    big, small = weights(32, 1, "big"), weights(16, 2, "small")
    for k in big:
        torch.testing.assert_close(big[k], small[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(tmp_path: Path, precision: str) -> None:
    trainer, record = _fit(tiny_spec(precision=precision, max_steps=4, grad_clip=1.0,
                                     data=digits_data(batch_size=64)), tmp_path / "run")
    assert math.isfinite(record["train_loss"])
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    state = ckpt.read_metadata_json(tmp_path / "run" / "checkpoints" / "last.state.safetensors")
    assert ("scale" in state["scaler"]) == (precision == "fp16")


@pytest.mark.slow
def test_eval_cli_scores_the_saved_weights_like_training(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.toml", tiny_spec(
        epochs=2, channels_last=True, ema={"decay": 0.8}, data=digits_data(batch_size=64)))
    train = _cli("train", str(spec), "--plain", cwd=tmp_path)  # default run dir: runs/s
    assert train.returncode == 0, train.stderr[-2000:]
    run = tmp_path / "runs" / "s"
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    best_epoch = json.loads((run / "checkpoints" / "last.json").read_text())["best_epoch"]
    best = json.loads((run / "metrics.jsonl").read_text().splitlines()[best_epoch - 1])
    for weights, expected in (("last.safetensors", last), ("best.safetensors", best)):
        proc = _cli("eval", str(spec), "--weights", str(run / "checkpoints" / weights), "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        metrics = json.loads(proc.stdout)
        assert metrics["accuracy/top1"] == expected["accuracy/top1"]
        assert metrics["accuracy/top5"] == expected["accuracy/top5"]
        assert metrics["num_samples"] == 359
        assert [r["class"] for r in metrics["per_class"]] == [str(d) for d in range(10)]
    table = _cli("eval", str(spec), "--weights", str(run))  # a run dir means its best weights
    assert table.returncode == 0 and "per-class accuracy" in table.stdout
    assert f"accuracy/top1 {best['accuracy/top1']:.2f}" in table.stdout


def test_bad_data_is_a_clear_error_before_training(tmp_path: Path) -> None:
    spec = tiny_spec(epochs=1)
    spec["data"]["train"] = {"type": "ImageFolder", "root": str(tmp_path / "nowhere")}
    proc = _cli("train", str(write_spec(tmp_path / "s.toml", spec)), "--run-dir",
                str(tmp_path / "run"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "nowhere" in proc.stderr and "data.train" in proc.stderr
    wrong = tiny_spec(epochs=1)
    wrong["model"]["head"]["num_classes"] = 7
    with pytest.raises(PretrainError, match="10 classes but the model predicts num_classes = 7"):
        _fit(wrong, tmp_path / "run2")
    assert not (tmp_path / "run2" / "checkpoints").exists()


def test_corrupt_checkpoint_on_resume_is_a_clear_error(tmp_path: Path) -> None:
    spec = tiny_spec(TINY_VIT, max_steps=2, data=digits_data(batch_size=64))
    _fit(spec, tmp_path / "run")
    state = tmp_path / "run" / "checkpoints" / "last.state.safetensors"
    state.write_bytes(state.read_bytes()[:-100])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        _fit(spec, tmp_path / "run", resume=True)


def test_curves_png_has_every_metric_log_loss_and_lr_panel(tmp_path: Path) -> None:
    from PIL import Image

    from pretrain.engine.plot import metric_series, plot_curves

    history = [{"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "lr": 0.1 / e, "accuracy/top1": 50.0 + e,
                "accuracy/top5": 90.0 + e, "mAP": 0.3 * e, "epoch_time_s": 1.0, "images_per_s": 9.0}
               for e in (1, 2, 3)]
    history[1].pop("accuracy/top1")  # an epoch without evaluation leaves a gap, not a crash
    panels = metric_series(history)
    assert set(panels["loss"]) == {"train_loss"}
    assert set(panels["metrics"]) == {"accuracy/top1", "accuracy/top5", "mAP"}  # every metric, no bookkeeping
    assert panels["lr"] == {"lr": [0.1, 0.05, 0.1 / 3]}
    assert plot_curves(history, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as img:
        assert img.size == (1500, 420)
    assert not plot_curves([], tmp_path / "empty.png") and not (tmp_path / "empty.png").exists()


@pytest.mark.slow
def test_seed_tutorial_config_trains(tmp_path: Path) -> None:
    """ResNet_CIFAR-18 + GAP + LinearClsHead + L1Loss: loss falls, accuracy beats chance in 2 epochs.

    The example runs at 32 px; here the digits are 16 px (4x less compute, same model).
    """
    spec = Path(__file__).resolve().parents[1] / "examples" / "specs" / "seed_tutorial_train.toml"
    small = [f"--set=data.{k}=16" for k in ("image_size", "train.image_size", "val.image_size")]
    proc = _cli("train", str(spec), "--run-dir", str(tmp_path / "run"), "--plain", *small,
                '--set=data.train.pipeline=[{type="RandomCrop", size=16, padding=2}]')
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert second["train_loss"] < first["train_loss"]
    assert second["accuracy/top1"] > 20.0  # chance is 10 %
    assert "11,173,962 parameters" in proc.stderr
