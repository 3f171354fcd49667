"""Training progress: a rich live bar on a terminal, plain log lines otherwise (CI, files).

Only rank 0 reports. The reporter never forces a device sync: the trainer hands
it host-side numbers it already has.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["ProgressReporter", "format_duration"]


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``"1:02:05"``."""
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressReporter:
    """Reports epochs and steps.

    Args:
        console: Where to print.
        enabled: False on non-zero ranks (prints nothing).
        live: Rich live bar (default: when ``console`` is a terminal).
        epochs: Total epochs of the run.
        total_steps: Total optimizer steps of the run (for the overall ETA).
        log_every: Plain mode: one line every this many steps.

    """

    def __init__(
        self,
        console: Console,
        *,
        enabled: bool,
        epochs: int,
        total_steps: int,
        log_every: int,
        live: bool | None = None,
    ) -> None:
        self.console = console
        self.enabled = enabled
        self.live = bool(enabled and (console.is_terminal if live is None else live))
        self.epochs = epochs
        self.total_steps = total_steps
        self.log_every = log_every
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._t0 = time.perf_counter()
        self._steps_timed = 0
        self._epoch = 0
        self._epoch_steps = 0

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> ProgressReporter:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("lr {task.fields[lr]}"),
                TextColumn("{task.fields[ips]} img/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("run eta {task.fields[run_eta]}"),
                console=self.console,
                refresh_per_second=4,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- events ------------------------------------------------------------------------

    def start_epoch(self, epoch: int, steps: int, done: int) -> None:
        """A new epoch (1-based) of ``steps`` optimizer steps, ``done`` of them already done."""
        self._epoch, self._epoch_steps = epoch, steps
        if not self.enabled:
            return
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(
                "train", total=steps, completed=done, epoch=epoch, epochs=self.epochs,
                loss="-", lr="-", ips="-", run_eta="-",
            )
        elif done:
            self.console.print(f"epoch {epoch}/{self.epochs}: resuming at step {done}/{steps}")

    def step(
        self, *, step_in_epoch: int, global_step: int, loss: float | None, lr: float,
        images_per_s: float, steps_done_this_session: int, elapsed: float,
    ) -> None:
        """After an optimizer step (loss None when not synced this step)."""
        if not self.enabled:
            return
        remaining = self.total_steps - global_step
        rate = elapsed / steps_done_this_session if steps_done_this_session else 0.0
        run_eta = format_duration(remaining * rate)
        loss_s = "-" if loss is None else f"{loss:.4f}"
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=step_in_epoch, loss=loss_s, lr=f"{lr:.2e}",
                ips=f"{images_per_s:.0f}", run_eta=run_eta,
            )
        elif step_in_epoch % self.log_every == 0 or step_in_epoch == self._epoch_steps:
            self.console.print(
                f"epoch {self._epoch}/{self.epochs} step {step_in_epoch}/{self._epoch_steps} "
                f"(global {global_step}/{self.total_steps}) loss {loss_s} lr {lr:.3e} "
                f"{images_per_s:.0f} img/s eta {run_eta}",
                highlight=False, soft_wrap=True,
            )

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Print the epoch's summary line (the metrics.jsonl record)."""
        if not self.enabled:
            return
        parts = [f"epoch {record['epoch']}/{self.epochs}", f"train_loss {record['train_loss']:.4f}"]
        parts += [f"{k} {v:.2f}" for k, v in record.items() if k.startswith(("accuracy/", "knn/", "retrieval/"))]
        if "val_loss" in record:
            parts.append(f"val_loss {record['val_loss']:.4f}")
        parts.append(f"lr {record['lr']:.3e}")
        parts.append(f"{record.get('epoch_time_s', 0.0):.1f}s")
        self.console.print(" | ".join(parts), highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        """Print a line above the live bar (or plainly)."""
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)


def print_run_header(
    console: Console, *, run_dir: Path, model: Any, device: Any, dist: Any, precision: str,
    channels_last: bool, compiled: bool, train_images: int, val_images: int | None, steps_per_epoch: int,
    epochs: int, total_steps: int, best_metric: tuple[str, str], has_classes: bool,
) -> None:
    """The three lines a run starts with: model, data and schedule, best-checkpoint metric."""
    n_params = sum(p.numel() for p in model.parameters())
    world = f" x {dist.world_size} processes" if dist.distributed else ""
    note = ""
    if val_images is not None and not has_classes:
        note = (f"\n  {type(model).__name__} predicts no dataset classes (e.g. self-supervised): "
                "data.val reports val_loss")
    console.print(
        f"[bold]pretrain train[/] -> {run_dir}\n"
        f"  model {type(model).__name__}: {n_params:,} parameters on {device}{world}, "
        f"{precision}{', channels_last' if channels_last else ''}{', compiled' if compiled else ''}\n"
        f"  data: {train_images} train images{f', {val_images} val images' if val_images is not None else ''}; "
        f"{steps_per_epoch} steps/epoch x {epochs} epochs = {total_steps} steps; "
        f"best checkpoint by {best_metric[0]} ({best_metric[1]}){note}",
        highlight=False,
    )
