"""How a multi-process run splits the work: ``train.strategy = "ddp"`` or ``"fsdp"``.

- **ddp** (default): every rank holds the whole model; ``DistributedDataParallel``
  all-reduces the gradients. Checkpoints are single files written by rank 0.
- **fsdp**: PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every
  parameter, gradient and optimizer state along dimension 0 over the ranks; a
  block's full weights exist only while it runs. Mixed precision goes through FSDP's
  ``MixedPrecisionPolicy`` (bf16 parameters in compute, fp32 gradient reduction,
  fp32 master weights). Checkpoints are sharded (:mod:`pretrain.engine.sharded`):
  every rank writes its own piece, no rank gathers the model.

The sharding units are the model's repeated blocks: every child of an
``nn.ModuleList``/``nn.Sequential`` that has parameters and is itself a composite
module (a transformer layer, a ResNet block); a model can name its own with a
``fsdp_units()`` method. Everything else (embeddings, norms, heads) belongs to the
root unit, a wrapper that routes ``loss``/``predict`` through ``forward`` so that
FSDP's hooks see every call.

Without ``torchrun`` (one process) both strategies train the plain model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.engine.distributed import DistInfo, LossForward
from pretrain.errors import PretrainError

__all__ = ["RoutedModel", "Strategy", "build_strategy", "fsdp_units"]

_BASIC = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.GroupNorm, nn.Embedding,
          nn.modules.batchnorm._BatchNorm)


class RoutedModel(nn.Module):
    """Routes ``loss`` and ``predict`` through ``forward`` (the FSDP root unit's hooks run on ``forward``).

    Args:
        model: The task model (``loss(inputs, targets)``, ``predict(inputs)``).

    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Any, targets: Tensor | None = None, mode: str = "loss") -> Any:
        """``model.loss(inputs, targets)`` or ``model.predict(inputs)``."""
        fn: Any = self.model.predict if mode == "predict" else self.model.loss
        return fn(inputs) if mode == "predict" else fn(inputs, targets)

    def loss(self, inputs: Any, targets: Tensor) -> dict[str, Tensor]:
        """The model's loss dict, through ``forward``."""
        return self(inputs, targets, mode="loss")  # type: ignore[no-any-return]

    def predict(self, inputs: Any) -> dict[str, Tensor]:
        """The model's predictions, through ``forward``."""
        return self(inputs, None, mode="predict")  # type: ignore[no-any-return]


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: ``model.fsdp_units()``, else the repeated composite blocks.

    A block is a child of an ``nn.ModuleList``/``nn.Sequential`` that has parameters and
    submodules of its own; blocks nested inside a chosen block are not chosen again.
    """
    custom = getattr(model, "fsdp_units", None)
    if callable(custom):
        return list(custom())
    chosen: list[nn.Module] = []
    taken: set[int] = set()

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if id(child) in taken:
                continue
            is_block = (isinstance(module, nn.ModuleList | nn.Sequential) and not isinstance(child, _BASIC)
                        and any(True for _ in child.children()) and any(True for _ in child.parameters()))
            if is_block:
                chosen.append(child)
                taken.update(id(m) for m in child.modules())
            else:
                visit(child)

    visit(model)
    return chosen


class Strategy:
    """The chosen strategy of a run: wraps the model, syncs gradients, says how checkpoints are written.

    Args:
        name: ``ddp`` or ``fsdp``.
        dist: This process's place in the run.
        precision: ``fp32``, ``bf16`` or ``fp16`` (FSDP: fp32/bf16).

    """

    def __init__(self, name: str, dist: DistInfo, precision: str) -> None:
        self.name = name
        self.dist = dist
        self.precision = precision
        self.sharded = name == "fsdp" and dist.distributed
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.root: nn.Module | None = None

    def prepare(self, model: nn.Module) -> None:
        """Shard ``model`` in place (FSDP; before the optimizer is built). A no-op otherwise."""
        if not self.sharded:
            return
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if self.precision == "fp16":
            raise PretrainError(
                'train.strategy = "fsdp" trains in fp32 or bf16; fp16 needs a gradient scaler that '
                "works on sharded gradients",
                hint='Set train.precision = "bf16" (or "fp32").',
            )
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if self.precision == "bf16" else MixedPrecisionPolicy()
        for unit in fsdp_units(model):
            fully_shard(unit, mp_policy=policy)
        self.root = RoutedModel(model)
        fully_shard(self.root, mp_policy=policy)

    def forward_fn(self, model: nn.Module, *, compile: bool) -> Any:
        """``forward(inputs, targets) -> loss dict`` through DDP, FSDP and/or torch.compile."""
        if self.root is not None:
            wrapped: nn.Module = self.root
        elif self.dist.distributed or compile:
            wrapped = LossForward(model)
            if self.dist.distributed:
                ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
                wrapped = self.ddp = nn.parallel.DistributedDataParallel(wrapped, device_ids=ids)
        else:
            return model.loss
        if compile:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
        return wrapped

    @contextlib.contextmanager
    def sync(self, last: bool) -> Iterator[None]:
        """Gradient sync only on the ``last`` micro-batch of an accumulation group."""
        if last:
            yield
        elif self.ddp is not None:
            with self.ddp.no_sync():
                yield
        elif self.root is not None:
            root: Any = self.root
            root.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                root.set_requires_gradient_sync(True)
        else:
            yield

    def eval_model(self, model: nn.Module) -> nn.Module:
        """What evaluation calls ``predict``/``loss`` on: the FSDP root, else the model itself."""
        return self.root if self.root is not None else model


def build_strategy(name: str, dist: DistInfo, *, precision: str, ema: bool) -> Strategy:
    """The run's strategy (see the module docstring).

    Raises:
        PretrainError: FSDP with an EMA (the average would need the whole model on a rank).

    """
    if name == "fsdp" and dist.distributed and ema:
        raise PretrainError(
            'train.strategy = "fsdp" cannot keep train.ema: the averaged copy would hold the whole '
            "model on every rank",
            hint='Remove [train.ema], or train with strategy = "ddp".',
        )
    return Strategy(name, dist, precision)
