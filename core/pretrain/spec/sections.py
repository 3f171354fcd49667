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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from pretrain.errors import PretrainError, did_you_mean
from pretrain.spec.context import ComponentNode, ValidationContext
from pretrain.spec.data_section import json_schema as data_json_schema
from pretrain.spec.data_section import validate_data_section
from pretrain.spec.eval_section import (
    DEFAULT_METRICS,
    EvalSection,
    ExactSearch,
    FaissSearch,
    KNNConfig,
    SearchConfig,
    Task,
    check_eval_section,
    effective_topk,
    eval_json_schema,
    known_metrics,
    metric_nodes,
    retrieval_topk,
)
from pretrain.spec.loggers import loggers_json_schema, validate_loggers
from pretrain.spec.values import MISSING

__all__ = [
    "DEFAULT_METRICS",
    "ConstantSchedule",
    "CosineSchedule",
    "CustomKey",
    "EMAConfig",
    "EvalSection",
    "ExactSearch",
    "FaissSearch",
    "KNNConfig",
    "MultiStepSchedule",
    "ParamwiseConfig",
    "ScheduleConfig",
    "SearchConfig",
    "StepSchedule",
    "Task",
    "TrainSection",
    "check_against_model",
    "check_best_metric",
    "effective_topk",
    "json_schemas",
    "known_metrics",
    "metric_nodes",
    "resolve_best_metric",
    "retrieval_topk",
    "section_json_schemas",
    "validate_sections",
]

# Hyper-parameters are finite: pydantic would accept `lr = inf` and `nan` for a plain float.
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]

#: Sanity bounds: far above any real run, low enough that a typo (an extra digit
#: group, `1e9` for `1e3`) fails validation instead of running for years or
#: allocating terabytes.
MAX_EPOCHS = 1_000_000
MAX_STEPS = 10**12
MAX_GRAD_ACCUM = 65_536
MAX_THREADS = 4_096
#: Seeds are 63-bit (torch, numpy and the data order all take them).
MAX_SEED = 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- optimizers


class CustomKey(_Strict):
    """Multipliers for every parameter whose name contains a key."""

    lr_mult: NonNegFloat = Field(default=1.0, description="Learning-rate multiplier.")
    decay_mult: NonNegFloat = Field(default=1.0, description="Weight-decay multiplier.")
    lars_exclude: bool = Field(
        default=False, description="LARS: no trust ratio for these parameters (MMPretrain's lars_exclude)."
    )


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

    epochs: Annotated[int, Field(gt=0, le=MAX_EPOCHS)] = Field(description="Number of passes over the data.")
    max_steps: Annotated[int, Field(gt=0, le=MAX_STEPS)] | None = Field(
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
    grad_accum: Annotated[int, Field(gt=0, le=MAX_GRAD_ACCUM)] = Field(
        default=1, description="Micro-batches accumulated per optimizer step."
    )
    ema: EMAConfig | None = Field(default=None, description="Exponential moving average of the weights.")
    device: str = Field(default="auto", description="auto (CUDA when available), cpu, cuda or cuda:N.")
    cpu_threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] | None = Field(
        default=None,
        description=(
            "torch intra-op threads on CPU (default: torch's choice). 1 is far faster for small "
            "models when other processes share the cores."
        ),
    )
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = Field(
        default=0, description="Seed of initialisation, data order and augmentation (0 to 2**63 - 1)."
    )
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

    @field_validator("device")
    @classmethod
    def _device(cls, d: str) -> str:
        ok = d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isascii() and d[5:].isdigit())
        if not ok:
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {d!r}")
        return d


#: Sections owned by the engine, with their pydantic models (``data`` lives in data.py).
_SECTION_MODELS: dict[str, type[BaseModel]] = {"train": TrainSection, "eval": EvalSection}


def validate_sections(raw: Mapping[str, Any], ctx: ValidationContext, *, check_best: bool = True) -> dict[str, Any]:
    """Validate the engine tables of a spec (``data``, ``train``, ``eval``).

    Args:
        raw: The whole merged spec.
        ctx: The core's validation context; issues are added to it with their paths.
        check_best: Check ``train.best_metric`` against every task's metrics; the spec
            validator turns it off when it checks against the model's task instead.

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
        validated: BaseModel | None
        try:
            validated = model.model_validate(table)
        except ValidationError as exc:
            ctx.add_pydantic(exc, name, model)
            validated = None
        if validated is not None and loggers is not None:
            trackers = validate_loggers(loggers, ctx, "train.loggers")
            validated = None if trackers is None else validated.model_copy(update={"loggers": trackers})
        if validated is not None and (model is not TrainSection or optimizer is not None):
            out[name] = validated
        ctx.check_values(value, out.get(name, MISSING), name)
    section = out.get("eval")
    if isinstance(section, EvalSection):
        check_eval_section(section, ctx)
    train = out.get("train")
    if isinstance(train, TrainSection):
        _cross_checks(raw, train, ctx)
        if check_best:
            check_best_metric(train, section if isinstance(section, EvalSection) else None, ctx)
    return out


def _cross_checks(raw: Mapping[str, Any], train: TrainSection, ctx: ValidationContext) -> None:
    """Checks that span fields: schedule milestones vs epochs (best metric: check_against_model)."""
    sched = train.schedule
    if isinstance(sched, MultiStepSchedule) and sched.milestones and (sched.milestones[-1] > train.epochs):
        ctx.add(
            "train.schedule.milestones",
            f"milestone {sched.milestones[-1]} is after the last epoch ({train.epochs})",
        )
    if sched.warmup_epochs > train.epochs:
        ctx.add("train.schedule.warmup_epochs", f"longer than the run ({train.epochs} epochs)")


def resolve_best_metric(
    train: TrainSection, *, has_classes: bool, retrieval_k: int | None = None,
) -> tuple[str, Literal["max", "min"]]:
    """The metric that picks the best checkpoint, and whether larger is better: decided here only.

    Unset, it is ``retrieval/Recall@{k}`` (the first K) for a retriever,
    ``accuracy/top1`` for a model that predicts dataset classes and ``val_loss`` for
    one that does not (self-supervised; ``knn/top1`` is there to choose); an unset
    mode is ``min`` for a loss and ``max`` for anything else.

    Raises:
        PretrainError: An accuracy was asked for but the model predicts no classes.

    """
    if retrieval_k is not None:
        default = f"retrieval/Recall@{retrieval_k}"
    else:
        default = "accuracy/top1" if has_classes else "val_loss"
    metric = train.best_metric or default
    if metric.startswith("accuracy/") and not has_classes:
        raise PretrainError(
            f"train.best_metric: {metric!r} needs a model that predicts dataset classes, but this "
            "model has num_classes = None (self-supervised), so validation reports val_loss only",
            hint='Set train.best_metric = "val_loss" (the default for such models) or leave it out.',
        )
    mode = train.best_mode or ("min" if metric.endswith("loss") else "max")
    return metric, mode


def check_against_model(
    sections: Mapping[str, Any], num_classes: int | None, ctx: ValidationContext, *,
    task: Task | None = None, model_topk: int | None = None,
) -> None:
    """Checks between the model and the sections.

    An explicit ``eval.topk`` above the class count (classifiers) or the retriever's
    ``topk``; metrics of another task than the model's; a retriever without a gallery;
    kNN without validation data; a ``train.best_metric`` the evaluation does not report.
    """
    task = task or ("classification" if num_classes is not None else "selfsup")
    section = sections.get("eval")
    section = section if isinstance(section, EvalSection) else None
    explicit = section is not None and "topk" in section.model_fields_set
    limit, what = (model_topk, "the retriever returns topk") if task == "retrieval" else (
        num_classes, "the model predicts")
    if explicit and limit is not None and section is not None and max(section.topk) > limit:
        kind = "retrieval" if task == "retrieval" else "accuracy"
        ctx.add(
            "eval.topk",
            f"asks for top-{max(section.topk)} {kind}, but {what} {limit} "
            f"{'items' if task == 'retrieval' else 'classes'}; use values <= {limit} (e.g. topk = [1])",
        )
    before = len(ctx.issues)
    nodes = metric_nodes(section, task, ctx)
    if section is not None and section.metrics is not None:
        model_is = {"classification": "a classifier", "retrieval": "a retriever",
                    "selfsup": "self-supervised (it reports val_loss and knn/*)"}[task]
        for node in nodes:
            wanted = getattr(node.cls, "task", "classification")
            if wanted != task:
                ctx.add(f"{node.loc}.type", f"{node.type_name} scores {wanted}, but the model is {model_is}; "
                        "remove it or use a metric for this model")
    data = sections.get("data")
    if data is not None and getattr(data, "val", None) is not None:
        if task == "retrieval" and getattr(data, "gallery", None) is None:
            ctx.add("data.gallery", "the model is a retriever: give the gallery its queries (data.val) are "
                    "ranked against, as a dataset table (e.g. type = \"Digits\", split = \"train\") or "
                    'a saved embeddings file (embeddings = "gallery.safetensors")')
    elif data is not None and section is not None and section.knn is not None:
        ctx.add("eval.knn", "kNN scores the validation data: add a [data.val] table")
    if (data is not None and section is not None and section.knn is not None
            and getattr(data, "gallery", None) is None and getattr(data, "train", None) is None):
        ctx.add("eval.knn", "kNN votes with a labelled gallery: add [data.gallery], or [data.train] (used "
                "through the validation pipeline)")
    train = sections.get("train")
    if isinstance(train, TrainSection) and len(ctx.issues) == before:
        check_best_metric(train, section, ctx, task=task, num_classes=num_classes, model_topk=model_topk)


def check_best_metric(
    train: TrainSection, section: EvalSection | None, ctx: ValidationContext, *, task: Task | None = None,
    num_classes: int | None = None, model_topk: int | None = None,
) -> None:
    """``train.best_metric`` must be a scalar the evaluation reports (of any task while the model is unknown)."""
    best = train.best_metric
    if best is None or any(i.loc == "train.best_metric" for i in ctx.issues):
        return
    tasks: tuple[Task, ...] = (task,) if task is not None else ("classification", "retrieval", "selfsup")
    known = list(dict.fromkeys(
        name for t in tasks
        for name in known_metrics(section, task=t, num_classes=num_classes, model_topk=model_topk, ctx=ctx)
    ))
    if best not in known:
        of = "this model" if task is not None else "any model"
        ctx.add(
            "train.best_metric",
            f"{best!r} is not a validation metric of {of}{did_you_mean(best, known)} "
            f"(known: {', '.join(known)}; the k of accuracies and retrieval metrics come from eval.topk)",
        )


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of the ``train`` and ``eval`` tables (for ``pretrain schema``).

    A component field (``train.optimizer``) is a ``#/$defs/<kind>`` reference into the
    spec schema, whose definitions list every installed component of that kind.
    """
    out = {"train": _kind_refs(TrainSection.model_json_schema()), "eval": _kind_refs(eval_json_schema())}
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
