"""The training loop.

One optimizer step, in order::

    lr = base_lr * schedule.factor(step)                   # per iteration, stateless
    for each of grad_accum micro-batches (DDP syncs only on the last):
        with autocast(bf16|fp16):  out = model.loss(x, y)  # x uint8 (B, C, H, W), y (B,)
        scaler.scale(out["loss"] / n).backward()
    clip_grad_norm_ ; optimizer.step ; zero_grad
    model.after_optimizer_step(step, total_steps)           # if defined (momentum teachers)
    ema.update

Losses stay on the device and are read back in one sync every ``sync_every``
steps (every step on CPU, where it is free), which is also where a non-finite
loss stops the run. Each epoch ends with evaluation, a ``metrics.jsonl`` record,
the ``last`` (and maybe ``best``) checkpoint and the ``pretrain_epoch_end`` hook.
Everything else lives in small modules: optim, schedule, checkpoint, ema, metrics,
distributed, progress, plot, rundir.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from pretrain.engine import checkpoint as ckpt
from pretrain.engine.distributed import (
    DistInfo,
    all_gather_tensors,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    init_distributed,
)
from pretrain.engine.ema import ModelEMA
from pretrain.engine.memory_format import ONEDNN_SAFE_CHANNELS, to_channels_last
from pretrain.engine.metrics import AccuracyMeter
from pretrain.engine.optim import build_optimizer
from pretrain.engine.progress import ProgressReporter
from pretrain.engine.rundir import RunDir
from pretrain.engine.schedule import build_schedule
from pretrain.engine.spec import EvalSection, TrainSection
from pretrain.errors import PretrainError

__all__ = [
    "NonFiniteLossError",
    "RunState",
    "Trainer",
    "evaluate_loss",
    "evaluate_model",
    "load_weights",
    "model_num_classes",
]

_PLOT_EVERY_S = 10.0


class NonFiniteLossError(PretrainError):
    """The loss became NaN or infinite; the run stopped without saving anything new."""


@dataclass
class RunState:
    """Counters saved in every checkpoint (JSON)."""

    seed: int = 0
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps done, whole run
    step_in_epoch: int = 0  # optimizer steps done in the unfinished epoch
    loss_sum: float = 0.0  # sum of this epoch's step losses (mean over ranks)
    loss_count: int = 0
    best: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class _LossForward(nn.Module):
    """Routes ``forward`` to ``model.loss`` so DDP's gradient hooks see the call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor | list[Tensor], targets: Tensor) -> dict[str, Tensor]:
        return self.model.loss(inputs, targets)  # type: ignore[operator, no-any-return]


def model_num_classes(model: nn.Module) -> int | None:
    """Dataset classes a model predicts: its ``num_classes``, else its head's; None for none.

    A model that sets ``num_classes = None`` (self-supervised: its head's classes are
    pretext labels such as rotations) is not scored against the dataset's labels.
    """
    owner: Any = model if hasattr(model, "num_classes") else getattr(model, "head", None)
    n = getattr(owner, "num_classes", None)
    return n if isinstance(n, int) else None


def _to_memory_format(x: Tensor | list[Tensor], channels_last: bool) -> Tensor | list[Tensor]:
    if not channels_last:
        return x
    if isinstance(x, list):
        return [v.contiguous(memory_format=torch.channels_last) for v in x]
    return x.contiguous(memory_format=torch.channels_last)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_model(
    model: nn.Module, batches: Iterator[tuple[Any, Tensor]] | Any, *, topk: Sequence[int],
    num_classes: int, device: torch.device, precision: str = "fp32", channels_last: bool = False,
    dist_info: DistInfo | None = None,
) -> dict[str, Any]:
    """Score ``model.predict`` on every batch: top-k accuracy (percent) and per-class accuracy.

    Training-time validation and ``pretrain eval`` both call this, so the same
    weights on the same data and device give the same numbers.
    """
    was_training = model.training
    model.eval()
    meter = AccuracyMeter(topk, num_classes, device)
    for inputs, labels in batches:
        with autocast_context(device, precision):
            predict: Any = model.predict
            scores = predict(_to_memory_format(inputs, channels_last))["scores"]  # (B, C)
        meter.update(scores.float(), labels)
    model.train(was_training)
    return meter.compute(dist_info)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, batches: Iterator[tuple[Any, Tensor]] | Any, *, device: torch.device,
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
                loss = loss_fn(_to_memory_format(inputs, channels_last), labels)["loss"]
            n = labels.shape[0]
            total += torch.stack([loss.detach().double() * n, torch.tensor(float(n), device=device)])
    model.train(was_training)
    if dist_info is not None and dist_info.distributed:
        import torch.distributed as tdist

        tdist.all_reduce(total)
    loss_sum, count = total.tolist()
    return {"val_loss": loss_sum / max(count, 1.0), "num_samples": int(count)}


class Trainer:
    """Trains a validated spec's model; one instance per run.

    Args:
        spec: A ``ValidatedSpec`` with ``data`` and ``train`` sections.
        run_dir: Where the spec, metrics, curves and checkpoints go.
        device: Overrides ``train.device``.
        seed: Overrides ``train.seed`` (a resumed run keeps its checkpoint's seed).
        resume: Continue from ``run_dir``'s last checkpoint (a fresh start if there is none).
        console: Where progress goes (rank 0 only).
        live: Force the rich live bar on/off (default: when ``console`` is a terminal).

    """

    def __init__(
        self, spec: Any, run_dir: str | Path, *, device: str | None = None, seed: int | None = None,
        resume: bool = False, console: Console | None = None, live: bool | None = None,
    ) -> None:
        if "train" not in spec.sections or "data" not in spec.sections:
            raise PretrainError(
                "the spec has no [train] or no [data] table, so there is nothing to train",
                hint="Add [data] (datasets) and [train] (epochs, optimizer) tables; see "
                "examples/specs/quickstart.toml.",
            )
        self.spec = spec
        self.cfg: TrainSection = spec.sections["train"]
        self.eval_cfg: EvalSection = spec.sections.get("eval") or EvalSection()
        self.run = RunDir(run_dir)
        self.resume = resume
        self.console = console or Console(stderr=True, highlight=False)
        self._device_arg, self._seed_arg, self._live = device, seed, live
        self.state = RunState()
        self._pending: list[Tensor] = []  # step losses not yet read back (device tensors)
        self._last_plot = 0.0
        self._epoch_time, self._epoch_images = 0.0, 0
        self._ready = False

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Build everything (model, data, optimizer, ...) and restore a checkpoint if resuming."""
        from pretrain._build import build_node
        from pretrain._plugins import get_plugin_manager
        from pretrain.engine.data import build_loaders

        cfg = self.cfg
        self.dist = d = init_distributed(self._device_arg or cfg.device)
        self.device = d.device
        resuming = self.resume and self._agree(self.run.state_file.exists())
        if not self.resume and not self._agree(not self.run.has_checkpoint()):
            self.run.check_fresh_start()  # raises with the full message on every rank
            raise PretrainError(f"run directory {self.run.path} holds checkpoints (on rank 0)")
        seed = self._seed_arg if self._seed_arg is not None else cfg.seed
        if resuming:
            seed = int(ckpt.read_metadata_json(self.run.state_file)["state"]["seed"])
        self.state.seed = seed
        self._configure_backends()

        torch.manual_seed(seed)  # identical initial weights on every rank
        model: nn.Module = build_node(self.spec.model)
        if cfg.sync_bn and d.distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
        model.to(self.device)
        self.channels_last = cfg.channels_last and self.device.type != "mps"
        if self.channels_last:
            guarded = to_channels_last(model, self.device)
            if guarded and d.is_main:
                self.console.print(
                    f"note: {len(guarded)} strided 1x1 convolution(s) with fewer than "
                    f"{ONEDNN_SAFE_CHANNELS} input channels stay contiguous on CPU "
                    f"(oneDNN issue #6035): {', '.join(guarded[:4])}{' ...' if len(guarded) > 4 else ''}",
                    highlight=False, markup=False,
                )
        self.model = model
        self.num_classes = model_num_classes(model)
        self.loaders = build_loaders(
            self.spec.sections["data"], device=self.device, distributed=d.distributed,
            rank=d.rank, world_size=d.world_size, seed=seed, num_classes=self.num_classes,
            in_channels=getattr(model, "in_channels", None),
        )
        if self.loaders.train is None:
            raise PretrainError("data: no training data", hint="Add a [data.train] table.")
        if self.loaders.val is not None and self.num_classes is None and d.is_main:
            self.console.print(
                f"[yellow]note:[/] {type(model).__name__} predicts no dataset classes "
                "(num_classes is None, e.g. self-supervised): data.val reports val_loss, "
                "and the best checkpoint is the lowest val_loss"
            )
        n_batches = len(self.loaders.train)
        self.steps_per_epoch = -(-n_batches // cfg.grad_accum)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.schedule = build_schedule(
            cfg.schedule, total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch
        )
        self.optimizer = build_optimizer(model, cfg.optimizer, cfg.paramwise)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.ema = ModelEMA(model, cfg.ema) if cfg.ema is not None else None

        # ``forward(x, y) -> loss dict``: model.loss itself, or through DDP / torch.compile.
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.forward: Callable[[Any, Tensor], dict[str, Tensor]] = model.loss  # type: ignore[assignment]
        if d.distributed or cfg.compile:
            wrapped: nn.Module = _LossForward(model)
            if d.distributed:
                ids = [self.device.index] if self.device.type == "cuda" else None
                wrapped = self.ddp = nn.parallel.DistributedDataParallel(wrapped, device_ids=ids)
            if cfg.compile:
                wrapped = torch.compile(wrapped)  # type: ignore[assignment]
            self.forward = wrapped

        if resuming:
            self._load_checkpoint()
        else:
            # Different dropout/drop-path draws per rank; data randomness is seeded by data.py.
            # numpy/random are seeded too, for components that draw from them.
            torch.manual_seed(seed + d.rank)
            np.random.seed((seed + d.rank) % 2**32)
            random.seed(seed + d.rank)
        self.hooks = get_plugin_manager().hook
        # Read losses back every step where that is free (CPU) or a hook needs each value.
        self._step_hooks = bool(self.hooks.pretrain_after_step.get_hookimpls())
        self.sync_every = (1 if (self.device.type == "cpu" or self._step_hooks)
                           else cfg.log_every_steps)
        self._ready = True

    def _configure_backends(self) -> None:
        if self.cfg.cpu_threads is not None:
            torch.set_num_threads(self.cfg.cpu_threads)
        if self.cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")  # TF32 matmuls/convs for fp32 runs

    def _agree(self, flag: bool) -> bool:
        """True on every rank iff ``flag`` is true on rank 0 (rank 0 owns the run directory)."""
        if not self.dist.distributed:
            return flag
        t = torch.tensor([float(flag) if self.dist.is_main else 0.0], device=self.device)
        return bool(all_reduce_sum(t, self.dist).item() > 0)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train to the end (or to ``max_steps``) and return the last epoch's record."""
        if not self._ready:
            self.setup()
        cfg, d = self.cfg, self.dist
        if d.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temp_files(self.run.checkpoints)
            if not (self.resume and self.run.spec_file.exists()):
                self.run.write_spec(self.spec.raw)
            self.run.write_metrics(self.state.history)
            self._print_header()
        self.progress = ProgressReporter(
            self.console, enabled=d.is_main, epochs=cfg.epochs, total_steps=self.total_steps,
            log_every=cfg.log_every_steps, live=self._live,
        )
        self.hooks.pretrain_train_start(trainer=self)
        record = self.state.history[-1] if self.state.history else {}
        self._t_session, self._steps_session = time.perf_counter(), 0
        with self.progress:
            while self.state.epoch < cfg.epochs:
                st = self.state
                if st.step >= self.total_steps and st.step_in_epoch == 0:
                    break  # max_steps reached and its epoch already closed
                epoch = st.epoch
                if st.step < self.total_steps:
                    self.train_epoch(epoch)
                record = self._end_epoch(epoch)
                if self.state.step >= self.total_steps:
                    break
        if d.is_main and self.state.history:
            self._plot(force=True)
        self.hooks.pretrain_train_end(trainer=self, metrics=record)
        return record

    def train_epoch(self, epoch: int, *, limit: int | None = None) -> None:
        """Run the optimizer steps of ``epoch`` (0-based) from ``state.step_in_epoch`` on.

        Args:
            epoch: Epoch index.
            limit: Stop after this many steps in this call (benchmarks).

        """
        st, accum, loader = self.state, self.cfg.grad_accum, self.loaders.train
        assert loader is not None
        n_batches = len(loader)
        self.progress.start_epoch(epoch + 1, self.steps_per_epoch, st.step_in_epoch)
        self.model.train()
        t0, images, done = time.perf_counter(), 0, 0
        group: list[tuple[Any, Tensor]] = []
        batch_index = st.step_in_epoch * accum
        for inputs, targets in loader.iter_from(epoch, batch_index):
            group.append((inputs, targets))
            batch_index += 1
            if len(group) < accum and batch_index < n_batches:
                continue
            images += sum(len(t) for _, t in group)
            self._pending.append(self.optimizer_step(group))  # scalar on the device
            group = []
            st.step += 1
            st.step_in_epoch += 1
            done += 1
            self._steps_session += 1
            loss = None
            due_ckpt = (self.cfg.checkpoint_every_steps is not None
                        and st.step % self.cfg.checkpoint_every_steps == 0
                        and st.step_in_epoch < self.steps_per_epoch
                        and st.step < self.total_steps)  # else the epoch's end saves next
            if st.step_in_epoch % self.sync_every == 0 or due_ckpt:
                loss = self._sync_losses()
            elapsed = time.perf_counter() - t0
            self.progress.step(
                step_in_epoch=st.step_in_epoch, global_step=st.step, loss=loss,
                lr=self._nominal_lr(st.step - 1), images_per_s=images / max(elapsed, 1e-9),
                steps_done_this_session=self._steps_session,
                elapsed=time.perf_counter() - self._t_session,
            )
            if due_ckpt:
                self._save_checkpoint(best=False)
            if st.step >= self.total_steps or (limit is not None and done >= limit):
                break
        self._sync_losses()
        self._epoch_time = time.perf_counter() - t0
        self._epoch_images = images

    def optimizer_step(self, group: Sequence[tuple[Any, Tensor]]) -> Tensor:
        """One optimizer step over ``group``'s micro-batches; returns their mean loss (device)."""
        opt, scaler, n = self.optimizer, self.scaler, len(group)
        factor = self.schedule.factor(self.state.step)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        total: Tensor | None = None
        for i, (inputs, targets) in enumerate(group):
            x = _to_memory_format(inputs, self.channels_last)  # uint8 (B, C, H, W)
            skip_sync = self.ddp is not None and i < n - 1
            with self.ddp.no_sync() if skip_sync else contextlib.nullcontext():  # type: ignore[union-attr]
                with autocast_context(self.device, self.cfg.precision):
                    loss = self.forward(x, targets)["loss"]  # scalar
                scaled = loss / n if n > 1 else loss
                if scaler.is_enabled():
                    scaled = scaler.scale(scaled)
                scaled.backward()  # type: ignore[no-untyped-call]
            total = loss.detach() if total is None else total + loss.detach()
        if self.cfg.grad_clip is not None:
            if scaler.is_enabled():
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self._params, self.cfg.grad_clip)
        if scaler.is_enabled():
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        # A momentum teacher (BYOL, MoCo) follows the weights just stepped; its schedule
        # gets the global step (1-based, this one included) and the run's length explicitly.
        after_step = getattr(self.model, "after_optimizer_step", None)
        if callable(after_step):
            after_step(step=self.state.step + 1, total_steps=self.total_steps)
        if self.ema is not None:
            self.ema.update(self.model, self.state.step + 1)
        assert total is not None
        return total / n if n > 1 else total

    def _sync_losses(self) -> float | None:
        """Read pending step losses back (mean over ranks); stop on a non-finite one."""
        if not self._pending:
            return None
        st = self.state
        first = st.step - len(self._pending) + 1
        if len(self._pending) == 1 and not self.dist.distributed:
            values = [float(self._pending[0].item())]  # the per-step CPU path: one call
        else:
            losses = torch.stack(self._pending).float()  # (k,)
            if self.dist.distributed:
                losses = all_reduce_sum(losses, self.dist) / self.dist.world_size
            values = losses.tolist()
        self._pending = []
        for i, value in enumerate(values):
            if not math.isfinite(value):
                self._non_finite(first + i, value)
            st.loss_sum += value
            st.loss_count += 1
            if self._step_hooks:
                self.hooks.pretrain_after_step(trainer=self, step=first + i, loss=value)
        return values[-1]

    def _non_finite(self, step: int, value: float) -> None:
        last = "no checkpoint was written yet"
        if self.run.state_file.exists():
            try:
                info = ckpt.read_metadata_json(self.run.state_file)["state"]
                last = (f"the last good checkpoint ({self.run.last_weights}, epoch "
                        f"{info['epoch']}, step {info['step']}) is kept")
            except PretrainError:
                last = f"the last checkpoint in {self.run.checkpoints} is kept"
        raise NonFiniteLossError(
            f"training stopped: the loss became {value} at step {step} (epoch "
            f"{self.state.epoch + 1}); {last}.",
            hint="Lower train.optimizer.lr or add warm-up (train.schedule.warmup_epochs), set "
            "train.grad_clip, or use precision = \"fp32\"/\"bf16\" instead of fp16. Resume "
            "from the kept checkpoint with --resume after changing the spec.",
        )

    def _nominal_lr(self, step: int) -> float:
        return self.cfg.optimizer.lr * self.schedule.factor(max(0, step))

    # ------------------------------------------------------------------ epoch end

    @property
    def best_metric(self) -> tuple[str, str]:
        """``(metric, "max"|"min")`` that picks the best checkpoint; lowest val_loss without classes."""
        return (self.cfg.best_metric, self.cfg.best_mode) if self.num_classes is not None else ("val_loss", "min")

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics of the evaluated weights (the EMA when it is evaluated)."""
        assert self.loaders.val is not None
        model = self.ema.module if self.ema is not None and self.ema.cfg.evaluate else self.model
        # BatchNorm statistics drift apart across DDP ranks between forwards; score (and
        # save) rank 0's, so every rank evaluates the weights in the checkpoint.
        broadcast_buffers(model, self.dist)
        if self.num_classes is None:
            return evaluate_loss(
                model, self.loaders.val, device=self.device, precision=self.cfg.precision,
                channels_last=self.channels_last, dist_info=self.dist,
            )
        return evaluate_model(
            model, self.loaders.val, topk=self.eval_cfg.topk, num_classes=self.num_classes,
            device=self.device, precision=self.cfg.precision, channels_last=self.channels_last,
            dist_info=self.dist,
        )

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        st, cfg = self.state, self.cfg
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": st.step,
            "train_loss": st.loss_sum / max(1, st.loss_count),
            "lr": self._nominal_lr(st.step - 1),
        }
        last_epoch = epoch + 1 >= cfg.epochs or st.step >= self.total_steps
        self.last_eval: dict[str, Any] | None = None
        if self.loaders.val is not None and ((epoch + 1) % cfg.eval_every_epochs == 0 or last_epoch):
            self.last_eval = self.evaluate()
            record.update(
                {k: v for k, v in self.last_eval.items() if k.startswith("accuracy/") or k == "val_loss"}
            )
        record["epoch_time_s"] = round(self._epoch_time, 3)
        record["images_per_s"] = round(self._epoch_images / max(self._epoch_time, 1e-9), 1)
        st.history.append(record)
        st.epoch, st.step_in_epoch, st.loss_sum, st.loss_count = epoch + 1, 0, 0.0, 0
        # Models without classes (self-supervised) keep the lowest validation loss.
        metric, mode = self.best_metric
        value = record.get(metric)
        better = value is not None and (st.best is None or (value > st.best if mode == "max" else value < st.best))
        if better:
            st.best, st.best_epoch = value, epoch + 1
        self._save_checkpoint(best=better, record=record)
        if self.dist.is_main:
            self.run.write_metrics(st.history)
            self.progress.end_epoch(record)
            self._plot()
        self.hooks.pretrain_epoch_end(trainer=self, epoch=epoch + 1, metrics=record)
        return record

    def _plot(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last_plot > _PLOT_EVERY_S:
            from pretrain.engine.plot import plot_curves

            plot_curves(self.state.history, self.run.plot_file)
            self._last_plot = time.perf_counter()

    # ------------------------------------------------------------------ checkpoints

    def _eval_weights(self) -> tuple[dict[str, Tensor], str]:
        if self.ema is not None and self.ema.cfg.evaluate:
            return self.ema.state_dict(), "ema"
        return self.model.state_dict(), "model"

    def _save_checkpoint(self, *, best: bool, record: dict[str, Any] | None = None) -> None:
        """Write ``last`` (+ ``best``) on rank 0; every rank contributes its RNG state."""
        rngs = all_gather_tensors(ckpt.capture_rng(), self.dist)  # collective: all ranks
        if self.dist.is_main:
            st = self.state
            tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            if self.ema is not None:
                tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
            opt_tensors, opt_doc = ckpt.flatten_optimizer(self.optimizer.state_dict())
            tensors.update(opt_tensors)
            for rank, states in enumerate(rngs):
                tensors.update({f"rng.{rank}.{k}": v for k, v in states.items()})
            doc = {
                "format": "pretrain.state/1", "state": asdict(st), "optimizer": opt_doc,
                "scaler": self.scaler.state_dict(), "world_size": self.dist.world_size,
                "ema_updates": self.ema.updates if self.ema is not None else 0,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            }
            ckpt.save_tensors(self.run.state_file, tensors, {"pretrain.state": ckpt.dumps(doc)})
            weights, source = self._eval_weights()
            meta = {
                "format": "pretrain.weights/1", "epoch": str(st.epoch), "step": str(st.step),
                "weights": source, "metrics": ckpt.dumps(record or {}),
                "spec": ckpt.dumps(self.spec.raw),
            }
            ckpt.save_tensors(self.run.last_weights, weights, meta)
            if best:
                ckpt.save_tensors(self.run.best_weights, weights, meta)
            info = {"epoch": st.epoch, "step": st.step, "step_in_epoch": st.step_in_epoch,
                    "best": st.best, "best_epoch": st.best_epoch, "weights": source,
                    "metrics": record or {}}
            ckpt.atomic_write_bytes(self.run.last_json, ckpt.dumps(info).encode())
        barrier(self.dist)

    def _load_checkpoint(self) -> None:
        path = self.run.state_file
        tensors, _ = ckpt.load_tensors(path)
        doc = ckpt.read_metadata_json(path)
        if doc["steps_per_epoch"] != self.steps_per_epoch:
            raise ckpt.CheckpointError(
                f"cannot resume from {path}: it was written with {doc['steps_per_epoch']} steps "
                f"per epoch, this run has {self.steps_per_epoch}",
                hint="The data, data.batch_size, train.grad_accum or the number of processes "
                "changed; resume with the original settings.",
            )

        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        load_weights(self.model, part("model."), path)
        if self.ema is not None:
            ema_state = part("ema.")
            load_weights(self.ema.module, ema_state or part("model."), path)
            self.ema.updates = int(doc.get("ema_updates", 0))
        # Hyper-parameters (lr, momentum, ...) come from the spec, so a resumed run may
        # change them; only the optimizer's state (moments, step counts) is restored.
        spec_groups = [{k: v for k, v in g.items() if k != "params"}
                       for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(
            ckpt.unflatten_optimizer(tensors, doc["optimizer"], self.optimizer.state_dict())
        )
        for group, values in zip(self.optimizer.param_groups, spec_groups, strict=True):
            group.update(values)
        if self.scaler.is_enabled() and doc.get("scaler"):
            self.scaler.load_state_dict(doc["scaler"])
        saved = doc["state"]
        self.state = RunState(**{k: saved[k] for k in asdict(RunState()) if k in saved})
        if doc["world_size"] == self.dist.world_size:
            ckpt.restore_rng({k: v.clone() for k, v in part(f"rng.{self.dist.rank}.").items()})
        else:
            torch.manual_seed(self.state.seed + self.dist.rank + self.state.step)
        if self.dist.is_main:
            self.console.print(
                f"resuming {self.run.path} at epoch {self.state.epoch + 1}, step "
                f"{self.state.step} ({self.state.step_in_epoch} steps into the epoch)",
                highlight=False,
            )

    def _print_header(self) -> None:
        n_params = sum(p.numel() for p in self.model.parameters())
        d, cfg, train = self.dist, self.cfg, self.loaders.train
        assert train is not None
        val = self.loaders.val
        world = f" x {d.world_size} processes" if d.distributed else ""
        self.console.print(
            f"[bold]pretrain train[/] -> {self.run.path}\n"
            f"  model {type(self.model).__name__}: {n_params:,} parameters on {self.device}{world}, "
            f"{cfg.precision}{', channels_last' if self.channels_last else ''}"
            f"{', compiled' if cfg.compile else ''}\n"
            f"  data: {train.size} train images"
            f"{f', {val.total_samples} val images' if val is not None else ''}; "
            f"{self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs = {self.total_steps} steps",
            highlight=False,
        )


def load_weights(module: nn.Module, state: dict[str, Tensor], path: Path | str) -> None:
    """Load ``state`` into ``module`` exactly (every key, every shape) or raise a CheckpointError."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ckpt.CheckpointError(
            f"the weights in {path} do not fit this model: {str(exc).strip()[:600]}",
            hint="The spec's model changed since the checkpoint was written; use the spec "
            "saved in the run directory (spec.toml).",
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise ckpt.CheckpointError(
            f"the weights in {path} do not fit this model: missing "
            f"{_few(result.missing_keys)}, unexpected {_few(result.unexpected_keys)}",
            hint="The spec's model changed since the checkpoint was written; use the spec "
            "saved in the run directory (spec.toml).",
        )


def _few(keys: Sequence[str]) -> str:
    keys = list(keys)
    if not keys:
        return "none"
    more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
    return ", ".join(keys[:4]) + more
