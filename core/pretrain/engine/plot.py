"""A PNG of a run's curves (``curves.png`` in the run directory), drawn with matplotlib.

Three panels, one point per epoch (the ``metrics.jsonl`` records):

- **loss**: ``train_loss`` and ``val_loss`` (when validation reports one) on a
  log scale (a linear one when a value is not positive);
- **validation metrics**: every other numeric metric of the records
  (``accuracy/top1``, ``accuracy/top5``, any metric a plugin adds), so a new metric
  appears without touching this file;
- **learning rate**: the nominal LR at the end of each epoch (a secondary panel,
  since its scale has nothing to do with the others).

Drawing uses the object-oriented API on an Agg canvas (no pyplot, no global state),
so it is safe in any thread and never opens a window.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from pretrain.engine.checkpoint import atomic_write_bytes

__all__ = ["CurvePlotter", "confusion_png", "metric_series", "plot_confusion_matrix", "plot_curves"]

#: Record keys that are bookkeeping, not curves of the metrics panel.
_NOT_METRICS = frozenset({
    "epoch", "step", "train_loss", "val_loss", "lr", "epoch_time_s", "images_per_s",
    "num_samples", "num_queries", "gallery_size", "knn_gallery_size",  # evaluation's counts
})


def _values(history: Sequence[dict[str, Any]], key: str) -> list[float]:
    out = []
    for record in history:
        value = record.get(key)
        out.append(float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan)
    return out


def metric_series(history: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Group the numeric series of ``history`` by panel: ``loss``, ``metrics``, ``lr``.

    Args:
        history: ``metrics.jsonl`` records (one per epoch).

    Returns:
        ``{"loss": {...}, "metrics": {...}, "lr": {...}}``, each mapping a record key to
        its per-epoch values (NaN where an epoch lacks it, e.g. between evaluations).

    """
    losses = {"train_loss": _values(history, "train_loss")}
    if any("val_loss" in r for r in history):
        losses["val_loss"] = _values(history, "val_loss")
    keys = sorted({
        k for r in history for k, v in r.items()
        if k not in _NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)
    })
    metrics = {k: _values(history, k) for k in keys}
    lr = {"lr": _values(history, "lr")} if any("lr" in r for r in history) else {}
    return {"loss": losses, "metrics": metrics, "lr": lr}


def _draw(ax: Any, epochs: list[float], series: dict[str, list[float]], *, title: str,
          log: bool = False, ylabel: str | None = None) -> None:
    finite = [v for vs in series.values() for v in vs if math.isfinite(v)]
    for name, values in series.items():
        pts = [(e, v) for e, v in zip(epochs, values, strict=True) if math.isfinite(v)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1.5, label=name)
    if log and finite and min(finite) > 0:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("epoch")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    if epochs and max(epochs) - min(epochs) < 12:
        ax.set_xticks(sorted(set(epochs)))
    if series and finite:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="gray")


def render_png(history: Sequence[dict[str, Any]], *, dpi: int = 100) -> bytes:
    """The curves of ``history`` as PNG bytes (see the module docstring for the panels)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(history)]
    panels = metric_series(history)
    fig = Figure(figsize=(15, 4.2), dpi=dpi)
    ax_loss, ax_metrics, ax_lr = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 3, 2]})
    _draw(ax_loss, epochs, panels["loss"], title="loss (log scale)", log=True)
    _draw(ax_metrics, epochs, panels["metrics"], title="validation metrics")
    _draw(ax_lr, epochs, panels["lr"], title="learning rate", ylabel="lr")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """Write the curves of ``history`` (metrics.jsonl records) to ``path`` atomically.

    Args:
        history: One record per epoch (``epoch``, ``train_loss``, ``lr``, metrics ...).
        path: The PNG to write.

    Returns:
        Whether a file was written (False for an empty history).

    """
    if not history:
        return False
    atomic_write_bytes(path, render_png(history))
    return True


class CurvePlotter:
    """Redraws ``curves.png`` at most every ``every_s`` seconds (drawing costs more than an epoch of a tiny run).

    Args:
        path: The image to (re)write.
        every_s: Minimum seconds between two drawings, unless forced.

    """

    def __init__(self, path: str | os.PathLike[str], every_s: float = 10.0) -> None:
        self.path, self.every_s = path, every_s
        self._last = -float("inf")

    def plot(self, history: Sequence[dict[str, Any]], *, force: bool = False) -> None:
        """Draw ``history`` if forced or due."""
        if force or time.perf_counter() - self._last > self.every_s:
            plot_curves(history, self.path)
            self._last = time.perf_counter()


def confusion_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], *, dpi: int = 80) -> bytes:
    """A confusion matrix (rows = true class, columns = predicted) as PNG bytes.

    Cells are coloured by the share of their row (the per-class recall on the
    diagonal); counts are written up to 20 classes, class names up to 40.
    """
    import matplotlib
    import numpy as np

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64).reshape(len(matrix), -1)  # (K, K)
    k = counts.shape[0]
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(12.0, 2.0 + 0.45 * k)
    fig = Figure(figsize=(side, side), dpi=dpi)
    ax = fig.subplots()
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=90, fontsize="small")
        ax.set_yticks(range(k), names, fontsize="small")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize="x-small",
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("validation confusion matrix")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike[str],
) -> None:
    """Write ``confusion_matrix.png`` (see :func:`confusion_png`) atomically; nothing for an empty matrix."""
    if len(matrix) == 0:
        return
    atomic_write_bytes(path, confusion_png(matrix, classes))
