"""Evaluation: the one implementation behind training-time validation and ``pretrain eval``.

Both paths call :func:`evaluate_model` (classifiers: top-k and per-class accuracy) or
:func:`evaluate_loss` (models without dataset classes, e.g. self-supervised: the
validation loss) with the same weights, data, precision and memory format, so
``pretrain eval`` reproduces the metric a run logged, to the last digit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.components import Masked
from pretrain.engine.distributed import DistInfo, init_distributed
from pretrain.engine.memory_format import to_channels_last
from pretrain.engine.metrics import AccuracyMeter
from pretrain.engine.run_state import load_weights
from pretrain.errors import PretrainError
from pretrain.spec.sections import EvalSection, effective_topk

__all__ = [
    "autocast_context",
    "evaluate_loss",
    "evaluate_model",
    "evaluate_weights",
    "model_num_classes",
    "to_memory_format",
]


def model_num_classes(model: nn.Module) -> int | None:
    """Dataset classes a model predicts: its ``num_classes``, else its head's; None for none.

    A model that sets ``num_classes = None`` (self-supervised: its head's classes are
    pretext labels such as rotations) is not scored against the dataset's labels.
    """
    owner: Any = model if hasattr(model, "num_classes") else getattr(model, "head", None)
    n = getattr(owner, "num_classes", None)
    return n if isinstance(n, int) else None


def to_memory_format(x: Any, channels_last: bool) -> Any:
    """A batch's images (a tensor, a list of views, or ``Masked``) in the channels-last format, if asked."""
    if not channels_last:
        return x
    if isinstance(x, Masked):  # the images change layout; the (N, h, w) mask stays as it is
        return x.map_images(lambda v: to_memory_format(v, channels_last))
    if isinstance(x, list):
        return [v.contiguous(memory_format=torch.channels_last) for v in x]
    if isinstance(x, Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_model(
    model: nn.Module, batches: Iterable[tuple[Any, Tensor]], *, topk: Sequence[int],
    num_classes: int, device: torch.device, precision: str = "fp32", channels_last: bool = False,
    dist_info: DistInfo | None = None,
) -> dict[str, Any]:
    """Score ``model.predict`` on every batch: top-k accuracy (percent) and per-class accuracy."""
    was_training = model.training
    model.eval()
    meter = AccuracyMeter(topk, num_classes, device)
    for inputs, labels in batches:
        with autocast_context(device, precision):
            predict: Any = model.predict
            scores = predict(to_memory_format(inputs, channels_last))["scores"]  # (B, C)
        meter.update(scores.float(), labels)
    model.train(was_training)
    return meter.compute(dist_info)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, batches: Iterable[tuple[Any, Tensor]], *, device: torch.device,
    precision: str = "fp32", channels_last: bool = False, dist_info: DistInfo | None = None,
) -> dict[str, Any]:
    """Mean validation ``loss`` of a model without dataset classes (self-supervised).

    Runs under a forked RNG seeded with 0: random masking/views are the same on every
    call, and the training RNG stream is untouched (bitwise resume stays exact).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of loss * n, n)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(0)
        for inputs, labels in batches:
            with autocast_context(device, precision):
                loss_fn: Any = model.loss
                loss = loss_fn(to_memory_format(inputs, channels_last), labels)["loss"]
            n = labels.shape[0]
            total += torch.stack([loss.detach().double() * n, torch.tensor(float(n), device=device)])
    model.train(was_training)
    if dist_info is not None and dist_info.distributed:
        import torch.distributed as tdist

        tdist.all_reduce(total)
    loss_sum, count = total.tolist()
    return {"val_loss": loss_sum / max(count, 1.0), "num_samples": int(count)}


def evaluate_weights(spec: Any, weights: str | Path, device: str | None = None) -> dict[str, Any]:
    """Score ``weights`` with ``spec``'s model on its ``data.val`` (one process or torchrun).

    Uses the spec's ``train.precision``, ``channels_last`` and seed, as training-time
    validation does.

    Returns:
        Classifiers: ``accuracy/top{k}`` (percent), ``num_samples``, ``per_class`` (with
        class names). Models without classes: ``val_loss``, ``num_samples``. Both with
        ``weights`` (the file read).

    Raises:
        PretrainError: No ``[data.val]``, unreadable weights, or weights that do not fit.

    """
    from pretrain.assembly.assemble import build_node
    from pretrain.engine.data import build_loaders
    from pretrain.engine.sharded import load_weights_file

    weights = Path(weights)
    data = spec.sections.get("data")
    if data is None or data.val is None:
        raise PretrainError("the spec has no [data.val] table, so there is nothing to evaluate on",
                            hint="Add [data.val] (e.g. type = \"Digits\", split = \"val\").")
    train = spec.sections.get("train")
    eval_cfg = spec.sections.get("eval") or EvalSection()
    precision = train.precision if train is not None else "fp32"
    info = init_distributed(device or (train.device if train is not None else "auto"))
    tensors, _ = load_weights_file(weights)  # checksums verified before anything is built; shards merged
    model = build_node(spec.model, init=False).to(info.device)
    load_weights(model, tensors, weights)
    channels_last = bool(train is not None and train.channels_last and info.device.type != "mps")
    if channels_last:
        to_channels_last(model, info.device)
    num_classes = model_num_classes(model)
    loaders = build_loaders(
        data, device=info.device, distributed=info.distributed, rank=info.rank,
        world_size=info.world_size, seed=train.seed if train is not None else 0,
        num_classes=num_classes, in_channels=getattr(model, "in_channels", None), splits=("val",),
    )
    assert loaders.val is not None
    if num_classes is None:  # self-supervised: the validation loss (e.g. MAE reconstruction)
        metrics = evaluate_loss(model, loaders.val, device=info.device, precision=precision,
                                channels_last=channels_last, dist_info=info)
    else:
        metrics = evaluate_model(
            model, loaders.val, topk=effective_topk(eval_cfg, num_classes), num_classes=num_classes,
            device=info.device, precision=precision, channels_last=channels_last, dist_info=info,
        )
        for row in metrics["per_class"]:
            c = row["class"]
            row["class"] = loaders.classes[c] if c < len(loaders.classes) else str(c)
    metrics["weights"] = str(weights)
    return metrics
