"""The training loop.

One optimizer step, in order::

    lr = base_lr * schedule.factor(step)                   # per iteration, stateless
    for each of grad_accum micro-batches (DDP syncs only on the last):
        with autocast(bf16|fp16):  out = model.loss(x, y)  # x uint8 (B, C, H, W), y (B,)
        scaler.scale(out["loss"] / n).backward()           # a disabled scaler passes through
    scaler.unscale_ ; clip_grad_norm_ ; scaler.step ; scaler.update ; zero_grad
    ema.update ; model.after_optimizer_step(step, total_steps)

Losses stay on the device and are read back in one sync every ``sync_every``
steps (every step on CPU, where it is free), which is also where a non-finite
loss stops the run. Each epoch ends with evaluation, a ``metrics.jsonl`` record,
the ``last`` (and maybe ``best``) checkpoint and the ``pretrain_epoch_end`` hook.
Everything else lives in small modules: optim, schedule, run_state, checkpoint,
evaluate, ema, metrics, distributed, strategy (DDP/FSDP), sharded, tracking,
progress, plot, rundir.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from pretrain.assembly.assemble import build_node
from pretrain.engine import checkpoint as ckpt
from pretrain.engine.data import Loaders, build_loaders
from pretrain.engine.distributed import (
    DistInfo,
    all_gather_tensors,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    configure_backends,
    init_distributed,
)
from pretrain.engine.ema import ModelEMA
from pretrain.engine.evaluate import (
    Evaluator,
    autocast_context,
    eval_splits,
    model_num_classes,
    model_task,
    record_metrics,
    to_memory_format,
)
from pretrain.engine.memory_format import guard_note, to_channels_last
from pretrain.engine.optim import build_optimizer
from pretrain.engine.plot import CurvePlotter, plot_confusion_matrix
from pretrain.engine.progress import ProgressReporter, print_run_header
from pretrain.engine.run_state import (
    RunState,
    describe_last_checkpoint,
    read_state,
    read_state_doc,
    write_checkpoint,
    write_sharded_checkpoint,
)
from pretrain.engine.rundir import RunDir, RunDirError
from pretrain.engine.schedule import LRSchedule, build_schedule
from pretrain.engine.strategy import Strategy, build_strategy
from pretrain.engine.tracking import epoch_images, log_step_scalars
from pretrain.errors import PretrainError
from pretrain.registry.plugins import HookCaller, get_plugin_manager
from pretrain.spec.sections import EvalSection, TrainSection, resolve_best_metric, retrieval_topk
from pretrain.spec.validate import ValidatedSpec

__all__ = ["NonFiniteLossError", "RunState", "Trainer"]

class NonFiniteLossError(PretrainError):
    """The loss became NaN or infinite; the run stopped without saving anything new."""


class Trainer:
    """Trains a validated spec's model; one instance per run.

    Args:
        spec: A validated spec with ``data`` and ``train`` sections.
        run_dir: Where the spec, metrics, curves and checkpoints go.
        device: Overrides ``train.device``.
        seed: Overrides ``train.seed`` (a resumed run keeps its checkpoint's seed).
        resume: Continue from ``run_dir``'s last checkpoint (a fresh start, with a note,
            when the directory holds no checkpoint at all).
        console: Where progress goes (rank 0 only).
        live: Force the rich live bar on/off (default: when ``console`` is a terminal).

    """

    def __init__(
        self, spec: ValidatedSpec, run_dir: str | Path, *, device: str | None = None,
        seed: int | None = None, resume: bool = False, console: Console | None = None,
        live: bool | None = None,
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
        # Built by setup():
        self.dist: DistInfo
        self.device: torch.device
        self.model: nn.Module
        self.num_classes: int | None = None
        self.best_metric: tuple[str, str] = ("val_loss", "min")
        self.channels_last = False
        self.loaders: Loaders
        self.steps_per_epoch = 0
        self.total_steps = 0
        self.schedule: LRSchedule
        self.optimizer: torch.optim.Optimizer
        self.scaler: torch.amp.GradScaler
        self.ema: ModelEMA | None = None
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.strategy: Strategy
        self.forward: Callable[[Any, Tensor], dict[str, Tensor]]
        self.hooks: HookCaller
        self.sync_every = 1
        self.progress: ProgressReporter | None = None
        self.last_eval: dict[str, Any] | None = None
        self._params: list[nn.Parameter] = []
        self._pending: list[Tensor] = []  # step losses not yet read back (device tensors)
        self._step_hooks = False
        self._plotter = CurvePlotter(self.run.plot_file)
        self._epoch_time, self._epoch_images = 0.0, 0
        self._t_session, self._steps_session = 0.0, 0
        self._ready = False

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Check the run directory, build everything, and restore a checkpoint if resuming.

        Nothing in the run directory is written here; on rank 0 the directory's lock is
        taken and held until :meth:`fit` returns (or :meth:`close`).
        """
        cfg = self.cfg
        self.dist = d = init_distributed(self._device_arg or cfg.device)
        self.device = d.device
        resuming = self._check_run_dir()
        try:
            self._build(resuming)
        except BaseException:
            self.close()
            raise
        self._ready = True

    def _check_run_dir(self) -> bool:
        """Rank 0 checks and locks the directory; every rank learns whether to resume."""
        status, error = 0.0, None
        if self.dist.is_main:
            try:
                resuming = self.run.claim(resume=self.resume)
                status = 2.0 if resuming else 1.0
                if self.resume and not resuming:
                    self.console.print(f"note: {self.run.path} holds no checkpoint; --resume starts a new run",
                                       highlight=False)
            except PretrainError as exc:
                error = exc
        if self.dist.distributed:
            status = float(all_reduce_sum(torch.tensor([status], device=self.device), self.dist).item())
        if error is not None:
            raise error
        if status == 0.0:
            raise RunDirError(f"rank 0 refused the run directory {self.run.path} (see its message)")
        return status == 2.0

    def _build(self, resuming: bool) -> None:
        cfg, d = self.cfg, self.dist
        seed = self._seed_arg if self._seed_arg is not None else cfg.seed
        if resuming:
            seed = int(read_state_doc(self.run.resume_state() or self.run.state_file)["state"]["seed"])
        self.state.seed = seed
        configure_backends(self.device, cpu_threads=cfg.cpu_threads, deterministic=cfg.deterministic)

        torch.manual_seed(seed)  # identical initial weights on every rank
        model: nn.Module = build_node(self.spec.model, console=self.console if d.is_main else None)
        if cfg.sync_bn and d.distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
        model.to(self.device)
        self.channels_last = cfg.channels_last and self.device.type != "mps"
        if self.channels_last:
            guarded = to_channels_last(model, self.device)
            if guarded and d.is_main:
                self.console.print(guard_note(guarded), highlight=False, markup=False)
        self.model = model
        self.num_classes, task, data = model_num_classes(model), model_task(model), self.spec.sections["data"]
        k = retrieval_topk(self.eval_cfg, getattr(model, "topk", None))[0] if task == "retrieval" else None
        self.best_metric = resolve_best_metric(cfg, has_classes=self.num_classes is not None, retrieval_k=k)
        self.loaders = build_loaders(
            data, device=self.device, distributed=d.distributed, rank=d.rank, world_size=d.world_size,
            seed=seed, num_classes=self.num_classes, in_channels=getattr(model, "in_channels", None),
            splits=("train", *eval_splits(data, self.eval_cfg, task)), retrieval=task == "retrieval",
        )
        self.evaluator = Evaluator(loaders=self.loaders, data=data, cfg=self.eval_cfg, task=task,
                                   num_classes=self.num_classes, device=self.device, dist=d,
                                   precision=cfg.precision, channels_last=self.channels_last)
        if self.loaders.train is None:
            raise PretrainError("data: no training data", hint="Add a [data.train] table.")
        n_batches = len(self.loaders.train)
        self.steps_per_epoch = -(-n_batches // cfg.grad_accum)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.schedule = build_schedule(cfg.schedule, total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch)
        self.strategy = build_strategy(cfg.strategy, d, precision=cfg.precision, ema=cfg.ema is not None)
        self.strategy.prepare(model)  # FSDP shards the parameters before the optimizer sees them
        self.optimizer = build_optimizer(model, cfg.optimizer, cfg.paramwise)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.ema = ModelEMA(model, cfg.ema) if cfg.ema is not None else None

        # ``forward(x, y) -> loss dict``: model.loss itself, or through DDP / FSDP / torch.compile.
        self.forward = self.strategy.forward_fn(model, compile=cfg.compile)
        self.ddp = self.strategy.ddp

        if resuming:
            self._load_checkpoint()
        else:
            # Different dropout/drop-path draws per rank; data randomness is seeded by data.py.
            # numpy/random are seeded too, for components that draw from them.
            torch.manual_seed(seed + d.rank)
            np.random.seed((seed + d.rank) % 2**32)
            random.seed(seed + d.rank)
        self.hooks = HookCaller(get_plugin_manager())
        # Read losses back every step where that is free (CPU) or a hook needs each value.
        self._step_hooks = self.hooks.has("pretrain_after_step")
        self.sync_every = 1 if (self.device.type == "cpu" or self._step_hooks) else cfg.log_every_steps

    def close(self) -> None:
        """Release the run directory's lock (idempotent; :meth:`fit` calls it)."""
        self.run.release_lock()

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train to the end (or to ``max_steps``) and return the last epoch's record."""
        if not self._ready:
            self.setup()
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict[str, Any]:
        cfg, d = self.cfg, self.dist
        if d.is_main:
            removed = ckpt.remove_stale_temp_files(self.run.checkpoints)
            if removed:
                self.console.print(f"note: removed {len(removed)} unfinished write(s) of a killed run "
                                   f"in {self.run.checkpoints}", highlight=False)
            if not (self.resume and self.run.spec_file.exists()):
                self.run.write_spec(self.spec.raw)
            if self.loaders.classes:
                self.run.write_classes(self.loaders.classes)
            self.run.write_metrics(self.state.history)
            train, val = self.loaders.train, self.loaders.val
            assert train is not None
            print_run_header(
                self.console, run_dir=self.run.path, model=self.model, device=self.device, dist=d,
                precision=cfg.precision, channels_last=self.channels_last, compiled=cfg.compile,
                train_images=train.size, val_images=val.total_samples if val is not None else None,
                steps_per_epoch=self.steps_per_epoch, epochs=cfg.epochs, total_steps=self.total_steps,
                best_metric=self.best_metric, has_classes=self.num_classes is not None,
            )
        self.progress = ProgressReporter(
            self.console, enabled=d.is_main, epochs=cfg.epochs, total_steps=self.total_steps,
            log_every=cfg.log_every_steps, live=self._live,
        )
        self.hooks.call("pretrain_train_start", trainer=self)
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
            self._plotter.plot(self.state.history, force=True)
        self.hooks.call("pretrain_train_end", trainer=self, metrics=record)
        return record

    def train_epoch(self, epoch: int, *, limit: int | None = None) -> None:
        """Run the optimizer steps of ``epoch`` (0-based) from ``state.step_in_epoch`` on.

        Args:
            epoch: Epoch index.
            limit: Stop after this many steps in this call (benchmarks).

        """
        st, accum, loader, progress = self.state, self.cfg.grad_accum, self.loaders.train, self.progress
        assert loader is not None and progress is not None
        n_batches = len(loader)
        progress.start_epoch(epoch + 1, self.steps_per_epoch, st.step_in_epoch)
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
            lr, ips = self._nominal_lr(st.step - 1), images / max(time.perf_counter() - t0, 1e-9)
            progress.step(step_in_epoch=st.step_in_epoch, global_step=st.step, loss=loss, lr=lr, images_per_s=ips,
                          steps_done_this_session=self._steps_session, elapsed=time.perf_counter() - self._t_session)
            log_step_scalars(self, loss, lr, ips)
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
        for g in opt.param_groups:  # a ``fix_lr`` group (SimSiam's predictor) stays at its base lr
            g["lr"] = g["base_lr"] if g.get("fix_lr") else g["base_lr"] * factor
        total: Tensor | None = None
        for i, (inputs, targets) in enumerate(group):
            x = to_memory_format(inputs, self.channels_last)  # uint8 (B, C, H, W)
            with self.strategy.sync(last=i == n - 1):
                with autocast_context(self.device, self.cfg.precision):
                    loss = self.forward(x, targets)["loss"]  # scalar
                scaler.scale(loss / n if n > 1 else loss).backward()  # type: ignore[no-untyped-call]
            total = loss.detach() if total is None else total + loss.detach()
        if self.cfg.grad_clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self._params, self.cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        step = self.state.step + 1  # 1-based: steps done including this one
        if self.ema is not None:
            self.ema.update(self.model, step)
        # A momentum teacher (BYOL, MoCo) follows the weights just stepped; its schedule
        # gets the global step and the run's length explicitly (never a global).
        after_step = getattr(self.model, "after_optimizer_step", None)
        if callable(after_step):
            after_step(step=step, total_steps=self.total_steps)
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
                self.hooks.call("pretrain_after_step", trainer=self, step=first + i, loss=value)
        return values[-1]

    def _non_finite(self, step: int, value: float) -> None:
        kept, advice = describe_last_checkpoint(self.run)
        raise NonFiniteLossError(
            f"training stopped: the loss became {value} at step {step} (epoch "
            f"{self.state.epoch + 1}); {kept}.",
            hint="Lower train.optimizer.lr or add warm-up (train.schedule.warmup_epochs), set "
            f"train.grad_clip, or use precision = \"fp32\"/\"bf16\" instead of fp16. {advice}",
        )

    def _nominal_lr(self, step: int) -> float:
        return float(self.cfg.optimizer.params["lr"]) * self.schedule.factor(max(0, step))

    # ------------------------------------------------------------------ epoch end

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics of the evaluated weights (the EMA when it is evaluated)."""
        assert self.loaders.val is not None
        model = self.ema.module if self.ema is not None and self.ema.cfg.evaluate else self.model
        model = self.strategy.eval_model(model)
        # BatchNorm statistics drift apart across DDP ranks between forwards; score (and
        # save) rank 0's, so every rank evaluates the weights in the checkpoint.
        broadcast_buffers(model, self.dist)
        return self.evaluator(model)

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        st, cfg = self.state, self.cfg
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": st.step,
            "train_loss": st.loss_sum / max(1, st.loss_count),
            "lr": self._nominal_lr(st.step - 1),
        }
        last_epoch = epoch + 1 >= cfg.epochs or st.step >= self.total_steps
        self.last_eval = None
        if self.loaders.val is not None and ((epoch + 1) % cfg.eval_every_epochs == 0 or last_epoch):
            self.last_eval = self.evaluate()
            record.update(record_metrics(self.last_eval))
        record["epoch_time_s"] = round(self._epoch_time, 3)
        record["images_per_s"] = round(self._epoch_images / max(self._epoch_time, 1e-9), 1)
        st.history.append(record)
        st.epoch, st.step_in_epoch, st.loss_sum, st.loss_count = epoch + 1, 0, 0.0, 0
        better = st.update_best(record.get(self.best_metric[0]), self.best_metric[1], epoch + 1)
        self._save_checkpoint(best=better, record=record)
        if self.dist.is_main:
            self.run.write_metrics(st.history)
            assert self.progress is not None
            self.progress.end_epoch(record)
            self._plotter.plot(st.history)
            if self.last_eval is not None and "confusion_matrix" in self.last_eval:
                plot_confusion_matrix(self.last_eval["confusion_matrix"], self.loaders.classes, self.run.confusion_file)
        self.hooks.call("pretrain_epoch_end", trainer=self, epoch=epoch + 1, metrics=record)
        epoch_images(self)  # for trackers that take images (only drawn when one does)
        return record

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, *, best: bool, record: dict[str, Any] | None = None) -> None:
        """Write ``last`` (+ ``best``): rank 0 with every rank's RNG state, or every rank its shard (FSDP)."""
        if self.strategy.sharded:  # FSDP: every rank writes its shard
            write_sharded_checkpoint(
                self.run, rank=self.dist.rank, world_size=self.dist.world_size, best=best, record=record or {},
                state=self.state, model=self.model, optimizer=self.optimizer, rng=ckpt.capture_rng(),
                steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                best_metric=self.best_metric[0], spec_raw=self.spec.raw, barrier=lambda: barrier(self.dist),
            )
            barrier(self.dist)
            return
        rngs = all_gather_tensors(ckpt.capture_rng(), self.dist)  # collective: all ranks
        if self.dist.is_main:
            write_checkpoint(
                self.run, best=best, record=record or {}, state=self.state, model=self.model,
                ema=self.ema, optimizer=self.optimizer, scaler=self.scaler, rngs=rngs,
                steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                best_metric=self.best_metric[0], spec_raw=self.spec.raw,
            )
        barrier(self.dist)

    def _load_checkpoint(self) -> None:
        self.state = read_state(
            self.run.resume_state() or self.run.state_file, model=self.model, ema=self.ema, optimizer=self.optimizer,
            scaler=self.scaler, rank=self.dist.rank, world_size=self.dist.world_size,
            steps_per_epoch=self.steps_per_epoch,
        )
        if self.dist.is_main:
            self.console.print(
                f"resuming {self.run.path} at epoch {self.state.epoch + 1}, step "
                f"{self.state.step} ({self.state.step_in_epoch} steps into the epoch)",
                highlight=False,
            )
