"""Schemas of the ``[train]`` and ``[eval]`` spec tables, and section validation.

Torch-free: ``pretrain validate`` and ``pretrain schema`` use these without
starting a training run. Every table forbids unknown keys, so a typo such as
``train.optimizer.weight_decy`` is reported with its path and a did-you-mean.

A ``[train]`` table, in full::

    [train]
    epochs = 20
    precision = "bf16"          # fp32 | bf16 | fp16 (fp16 uses a GradScaler)
    channels_last = true
    grad_clip = 1.0             # max global L2 norm of the gradients
    grad_accum = 2              # micro-batches per optimizer step
    checkpoint_every_steps = 200

    [train.optimizer]           # an optimizer component (pretrain.optimizers entry points)
    type = "AdamW"
    lr = 1e-3
    weight_decay = 0.05

    [train.paramwise]           # per-parameter multipliers (optional)
    norm_decay_mult = 0.0
    bias_decay_mult = 0.0
    layer_decay_rate = 0.65     # needs a backbone with get_layer_depth

    [train.schedule]            # per-iteration learning-rate factor
    type = "cosine"
    warmup_epochs = 1

    [train.ema]                 # optional exponential moving average of the weights
    decay = 0.999
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from pretrain.errors import PretrainError, did_you_mean
from pretrain.spec.context import ComponentNode, ValidationContext
from pretrain.spec.data_section import json_schema as data_json_schema
from pretrain.spec.data_section import validate_data_section
from pretrain.spec.loggers import loggers_json_schema, validate_loggers

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "CustomKey",
    "EMAConfig",
    "EvalSection",
    "MultiStepSchedule",
    "ParamwiseConfig",
    "ScheduleConfig",
    "StepSchedule",
    "TrainSection",
    "check_against_model",
    "effective_topk",
    "json_schemas",
    "resolve_best_metric",
    "section_json_schemas",
    "validate_sections",
]

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- optimizers


class CustomKey(_Strict):
    """Multipliers for every parameter whose name contains a key."""

    lr_mult: NonNegFloat = Field(default=1.0, description="Learning-rate multiplier.")
    decay_mult: NonNegFloat = Field(default=1.0, description="Weight-decay multiplier.")


class ParamwiseConfig(_Strict):
    """Per-parameter learning-rate and weight-decay multipliers (MMPretrain's ``paramwise_cfg``)."""

    norm_decay_mult: NonNegFloat | None = Field(
        default=None,
        description="Weight-decay multiplier of normalisation-layer weights and biases "
        "(0 = no decay); unset = like any other parameter.",
    )
    bias_decay_mult: NonNegFloat | None = Field(
        default=None, description="Weight-decay multiplier of biases (0 = no decay); unset = no change."
    )
    flat_decay_mult: NonNegFloat | None = Field(
        default=None,
        description="Weight-decay multiplier of every 1-D parameter (tokens, scales, biases); unset = no change.",
    )
    layer_decay_rate: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None,
        description="Layer-wise LR decay: a parameter at depth d of n gets "
        "lr * rate ** (n - d - 1). Needs a backbone with get_layer_depth.",
    )
    custom_keys: dict[str, CustomKey] = Field(
        default_factory=dict,
        description="Name substring -> multipliers; the longest matching key wins.",
    )


# --------------------------------------------------------------------------- schedules


class _ScheduleBase(_Strict):
    warmup_epochs: NonNegFloat = Field(default=0.0, description="Linear warm-up length in epochs (fractions allowed).")
    warmup_steps: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Linear warm-up length in optimizer steps (instead of warmup_epochs)."
    )
    warmup_start_factor: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.001, description="LR factor at step 0 of the warm-up."
    )

    @model_validator(mode="after")
    def _one_warmup(self) -> _ScheduleBase:
        if self.warmup_steps is not None and self.warmup_epochs > 0:
            raise ValueError("give warmup_epochs or warmup_steps, not both")
        return self


class ConstantSchedule(_ScheduleBase):
    """Constant learning rate after the warm-up."""

    type: Literal["constant"]


class CosineSchedule(_ScheduleBase):
    """Cosine annealing from the base LR to ``min_lr_ratio * lr`` over the steps after warm-up."""

    type: Literal["cosine"]
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0, description="Final LR as a fraction of the base LR."
    )


class StepSchedule(_ScheduleBase):
    """Multiply the LR by ``gamma`` every ``step_epochs`` epochs (applied per iteration)."""

    type: Literal["step"]
    step_epochs: Annotated[int, Field(gt=0)] = Field(description="Epochs between decays.")
    gamma: Annotated[float, Field(gt=0, le=1)] = Field(default=0.1, description="Decay factor.")


class MultiStepSchedule(_ScheduleBase):
    """Multiply the LR by ``gamma`` at each milestone epoch."""

    type: Literal["multistep"]
    milestones: list[Annotated[int, Field(gt=0)]] = Field(description="Epochs at which the LR decays (increasing).")
    gamma: Annotated[float, Field(gt=0, le=1)] = Field(default=0.1, description="Decay factor.")

    @model_validator(mode="after")
    def _increasing(self) -> MultiStepSchedule:
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError("milestones must be strictly increasing")
        return self


ScheduleConfig = Annotated[
    ConstantSchedule | CosineSchedule | StepSchedule | MultiStepSchedule,
    Field(discriminator="type"),
]


class EMAConfig(_Strict):
    """Exponential moving average of the weights: ``ema = decay * ema + (1 - decay) * w``."""

    decay: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.999, description="Weight of the running average per update (the paper's m)."
    )
    every_steps: Annotated[int, Field(gt=0)] = Field(
        default=1, description="Update the average every this many optimizer steps."
    )
    warmup: bool = Field(
        default=False,
        description="Use min(decay, (1 + n) / (10 + n)) for the n-th update, so the "
        "average forgets the random init quickly.",
    )
    evaluate: bool = Field(default=True, description="Evaluate (and save as the run's weights) the averaged model.")


# --------------------------------------------------------------------------- sections


class TrainSection(_Strict):
    """The ``[train]`` table: how to optimise the model."""

    epochs: Annotated[int, Field(gt=0)] = Field(description="Number of passes over the data.")
    max_steps: Annotated[int, Field(gt=0)] | None = Field(
        default=None,
        description="Stop after this many optimizer steps in total (smoke runs); the "
        "schedule is stretched over min(epochs * steps_per_epoch, max_steps).",
    )
    optimizer: Annotated[Any, WithJsonSchema({"x-pretrain-kind": "optimizer"})] = Field(
        description="The optimizer: a table with a `type` (SGD, AdamW, Adam, RMSprop, LARS, Lamb, "
        "or any installed optimizer component) and its fields, e.g. lr."
    )
    paramwise: ParamwiseConfig | None = Field(
        default=None, description="Per-parameter learning-rate / weight-decay multipliers."
    )
    schedule: ScheduleConfig = Field(
        default_factory=lambda: ConstantSchedule(type="constant"),
        description="Per-iteration learning-rate schedule.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="Autocast precision; fp16 also uses a GradScaler."
    )
    channels_last: bool = Field(default=False, description="Use the channels-last memory format.")
    compile: bool = Field(default=False, description="Wrap the model in torch.compile.")
    grad_clip: PositiveFloat | None = Field(
        default=None, description="Clip the global L2 norm of the gradients to this value."
    )
    grad_accum: Annotated[int, Field(gt=0)] = Field(
        default=1, description="Micro-batches accumulated per optimizer step."
    )
    ema: EMAConfig | None = Field(default=None, description="Exponential moving average of the weights.")
    device: str = Field(default="auto", description="auto (CUDA when available), cpu, cuda or cuda:N.")
    cpu_threads: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description=(
            "torch intra-op threads on CPU (default: torch's choice). 1 is far faster for small "
            "models when other processes share the cores."
        ),
    )
    seed: int = Field(default=0, description="Seed of initialisation, data order and augmentation.")
    deterministic: bool = Field(default=False, description="Ask torch for deterministic algorithms (slower on CUDA).")
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="Multi-process training under torchrun: ddp (every rank holds the model) or fsdp "
        "(FSDP2 fully_shard: parameters, gradients and optimizer state sharded; sharded checkpoints).",
    )
    loggers: dict[str, Any] = Field(
        default_factory=dict,
        description="Experiment trackers: [train.loggers.tensorboard], .mlflow, .wandb (each an optional "
        "extra) or any tracker a plugin adds; each sub-table holds that tracker's options.",
    )
    sync_bn: bool = Field(
        default=False, description="Convert BatchNorm to SyncBatchNorm under multi-GPU DDP (CUDA only)."
    )
    checkpoint_every_steps: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Also save the 'last' checkpoint every this many optimizer steps."
    )
    eval_every_epochs: Annotated[int, Field(gt=0)] = Field(
        default=1, description="Evaluate on the validation data every this many epochs (and at the end)."
    )
    log_every_steps: Annotated[int, Field(gt=0)] = Field(
        default=20, description="Plain-text progress line interval when not on a terminal."
    )
    best_metric: str | None = Field(
        default=None,
        description="Validation metric that selects the 'best' checkpoint: accuracy/top{k} for "
        "k in eval.topk, or val_loss. Default: accuracy/top1 for models that predict dataset "
        "classes, val_loss for models that do not (self-supervised).",
    )
    best_mode: Literal["max", "min"] | None = Field(
        default=None,
        description="Whether larger is better; default: min for val_loss, max for accuracies.",
    )

    @model_validator(mode="after")
    def _device(self) -> TrainSection:
        d = self.device
        ok = d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isdigit())
        if not ok:
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {d!r}")
        return self


class EvalSection(_Strict):
    """The ``[eval]`` table: how validation and ``pretrain eval`` score a model."""

    topk: tuple[Annotated[int, Field(gt=0)], ...] = Field(
        default=(1, 5), min_length=1,
        description="Report accuracy/top{k} (percent) for each k. Unset: (1, 5), without the k "
        "larger than the model's class count; an explicit k above it is an error.",
    )
    per_class: bool = Field(default=True, description="Also compute per-class accuracy.")


#: Sections owned by the engine, with their pydantic models (``data`` lives in data.py).
_SECTION_MODELS: dict[str, type[BaseModel]] = {"train": TrainSection, "eval": EvalSection}


def validate_sections(raw: Mapping[str, Any], ctx: ValidationContext) -> dict[str, Any]:
    """Validate the engine tables of a spec (``data``, ``train``, ``eval``).

    Args:
        raw: The whole merged spec.
        ctx: The core's validation context; issues are added to it with their paths.

    Returns:
        The validated section objects keyed by table name (only the valid ones).

    """
    out: dict[str, Any] = {}
    if "data" in raw:
        data = validate_data_section(raw["data"], ctx, "data")
        if data is not None:
            out["data"] = data
    elif "train" in raw:
        ctx.add("data", "required by [train]: add a [data] table with train (and val) datasets")
    for name, model in _SECTION_MODELS.items():
        if name not in raw:
            continue
        value = raw[name]
        if not isinstance(value, Mapping):
            ctx.add(name, f"must be a table, got {type(value).__name__}")
            continue
        table = dict(value)
        optimizer: ComponentNode | None = None
        loggers = table.pop("loggers", None) if model is TrainSection else None
        if model is TrainSection and "optimizer" in table:
            # A registered kind: resolved through the registry like any component table.
            optimizer = ctx.component("optimizer", table.pop("optimizer"), "train.optimizer")
            table["optimizer"] = optimizer if optimizer is not None else {}
        try:
            section = model.model_validate(table)
        except ValidationError as exc:
            ctx.add_pydantic(exc, name, model)
            continue
        if loggers is not None:
            trackers = validate_loggers(loggers, ctx, "train.loggers")
            if trackers is None:
                continue
            section = section.model_copy(update={"loggers": trackers})
        if model is not TrainSection or optimizer is not None:
            out[name] = section
    train = out.get("train")
    if isinstance(train, TrainSection):
        _cross_checks(raw, train, ctx)
    return out


def _cross_checks(raw: Mapping[str, Any], train: TrainSection, ctx: ValidationContext) -> None:
    """Checks that span fields: schedule milestones vs epochs, best metric vs eval top-k."""
    sched = train.schedule
    if isinstance(sched, MultiStepSchedule) and sched.milestones and (sched.milestones[-1] > train.epochs):
        ctx.add(
            "train.schedule.milestones",
            f"milestone {sched.milestones[-1]} is after the last epoch ({train.epochs})",
        )
    if sched.warmup_epochs > train.epochs:
        ctx.add("train.schedule.warmup_epochs", f"longer than the run ({train.epochs} epochs)")
    eval_raw = raw.get("eval")
    topk = (1, 5)
    if isinstance(eval_raw, Mapping) and isinstance(eval_raw.get("topk"), list | tuple):
        topk = tuple(eval_raw["topk"])
    known = [*(f"accuracy/top{k}" for k in topk), "val_loss"]
    if train.best_metric is not None and train.best_metric not in known:
        ctx.add(
            "train.best_metric",
            f"{train.best_metric!r} is not a validation metric{did_you_mean(train.best_metric, known)} "
            f"(known: {', '.join(known)}; accuracies come from eval.topk)",
        )


def resolve_best_metric(train: TrainSection, *, has_classes: bool) -> tuple[str, Literal["max", "min"]]:
    """The metric that picks the best checkpoint, and whether larger is better: decided here only.

    Unset, it is ``accuracy/top1`` for a model that predicts dataset classes and
    ``val_loss`` for one that does not (self-supervised); an unset mode is ``min`` for
    a loss and ``max`` for anything else.

    Raises:
        PretrainError: An accuracy was asked for but the model predicts no classes.

    """
    metric = train.best_metric or ("accuracy/top1" if has_classes else "val_loss")
    if metric.startswith("accuracy/") and not has_classes:
        raise PretrainError(
            f"train.best_metric: {metric!r} needs a model that predicts dataset classes, but this "
            "model has num_classes = None (self-supervised), so validation reports val_loss only",
            hint='Set train.best_metric = "val_loss" (the default for such models) or leave it out.',
        )
    mode = train.best_mode or ("min" if metric.endswith("loss") else "max")
    return metric, mode


def effective_topk(section: EvalSection, num_classes: int) -> tuple[int, ...]:
    """The k of ``accuracy/top{k}``: as given, or the default (1, 5) without k > ``num_classes``."""
    if "topk" in section.model_fields_set:
        return section.topk
    return tuple(k for k in section.topk if k <= num_classes) or (1,)


def check_against_model(sections: Mapping[str, Any], num_classes: int | None, ctx: ValidationContext) -> None:
    """Checks between the model and the sections: an explicit ``eval.topk`` above the class count."""
    section = sections.get("eval")
    if num_classes is None or not isinstance(section, EvalSection) or "topk" not in section.model_fields_set:
        return
    bad = [k for k in section.topk if k > num_classes]
    if bad:
        ctx.add(
            "eval.topk",
            f"asks for top-{max(bad)} accuracy, but the model predicts {num_classes} classes; "
            f"use values <= {num_classes} (e.g. topk = [1])",
        )


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of the ``train`` and ``eval`` tables (for ``pretrain schema``).

    A component field (``train.optimizer``) is a ``#/$defs/<kind>`` reference into the
    spec schema, whose definitions list every installed component of that kind.
    """
    out = {name: _kind_refs(model.model_json_schema()) for name, model in _SECTION_MODELS.items()}
    loggers = out["train"]["properties"]["loggers"]
    out["train"]["properties"]["loggers"] = loggers_json_schema(loggers.get("description", ""))
    return out


def _kind_refs(node: Any) -> Any:
    # pydantic cannot emit a "$ref" it does not define, so fields carry a marker instead.
    if isinstance(node, dict):
        if "x-pretrain-kind" in node:
            ref: dict[str, Any] = {"$ref": f"#/$defs/{node['x-pretrain-kind']}"}
            if "description" in node:
                ref["description"] = node["description"]
            return ref
        return {k: _kind_refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_kind_refs(v) for v in node]
    return node


def section_json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of every engine table (``data``, ``train``, ``eval``) for ``pretrain schema``."""
    return {"data": data_json_schema(), **json_schemas()}
