"""A PNG of the loss and metric curves of a run (``curves.png`` in the run directory).

Uses matplotlib when installed (the ``pretrain[plot]`` extra); otherwise Pillow
(a core dependency) draws simple line charts, so the PNG always exists.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from pretrain.engine.checkpoint import atomic_write_bytes

__all__ = ["CurvePlotter", "plot_confusion_matrix", "plot_curves"]

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
#: Percent metrics drawn in the validation panel.
_PERCENT_PREFIXES = ("accuracy/", "knn/", "retrieval/")


def _series(history: Sequence[dict[str, Any]]) -> tuple[list[float], dict[str, list[float]]]:
    epochs = [float(r["epoch"]) for r in history]
    keys = sorted({k for r in history for k in r if k.startswith(_PERCENT_PREFIXES)})
    metrics = {k: [float(r.get(k, float("nan"))) for r in history] for k in keys}
    return epochs, metrics


def _losses(history: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """``train_loss``, and ``val_loss`` when the run has one (self-supervised validation)."""
    out = {"train_loss": [float(r["train_loss"]) for r in history]}
    if any("val_loss" in r for r in history):
        out["val_loss"] = [float(r.get("val_loss", float("nan"))) for r in history]
    return out


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], *,
                backend: str = "auto") -> str:
    """Write the curves of ``history`` (metrics.jsonl records) to ``path``.

    Args:
        history: One record per epoch (``epoch``, ``train_loss``, ``accuracy/top*``...).
        path: The PNG to (atomically) write.
        backend: ``auto`` (matplotlib if importable), ``matplotlib`` or ``pillow``.

    Returns:
        The backend used.

    """
    if not history:
        return "none"
    use_mpl = backend == "matplotlib" or (
        backend == "auto" and importlib.util.find_spec("matplotlib") is not None
    )
    data = _matplotlib_png(history) if use_mpl else _pillow_png(history)
    atomic_write_bytes(path, data)
    return "matplotlib" if use_mpl else "pillow"


def _matplotlib_png(history: Sequence[dict[str, Any]]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs, metrics = _series(history)
    fig = Figure(figsize=(10, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    for key, values in _losses(history).items():
        ax1.plot(epochs, values, marker="o", ms=3, label=key)
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.grid(alpha=0.3)
    ax1.legend(loc="upper right")
    for key, values in metrics.items():
        ax2.plot(epochs, values, marker="o", ms=3, label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("%")
    ax2.set_title("validation")
    ax2.grid(alpha=0.3)
    if metrics:
        ax2.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _pillow_png(history: Sequence[dict[str, Any]]) -> bytes:
    import io

    from PIL import Image, ImageDraw

    epochs, metrics = _series(history)
    panel_w, h, pad = 500, 400, 50
    img = Image.new("RGB", (2 * panel_w, h), "white")
    draw = ImageDraw.Draw(img)
    panels = [
        ("loss", _losses(history)),
        ("validation (%)", metrics),
    ]
    for p, (title, series) in enumerate(panels):
        x0, x1, y0, y1 = p * panel_w + pad, (p + 1) * panel_w - 20, 30, h - pad
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, 8), title, fill="black")
        values = [v for vs in series.values() for v in vs if not math.isnan(v)]
        if not values:
            continue
        lo, hi = min(values), max(values)
        if hi - lo < 1e-12:
            lo, hi = lo - 1, hi + 1
        e_lo, e_hi = min(epochs), max(epochs)
        e_span = (e_hi - e_lo) or 1.0

        def xy(e: float, v: float, x0: int = x0, x1: int = x1, y0: int = y0, y1: int = y1,
               lo: float = lo, hi: float = hi, e_lo: float = e_lo, e_span: float = e_span,
               ) -> tuple[float, float]:
            return (x0 + (x1 - x0) * (e - e_lo) / e_span, y1 - (y1 - y0) * (v - lo) / (hi - lo))

        draw.text((x0 - 45, y0), f"{hi:.3g}", fill="black")
        draw.text((x0 - 45, y1 - 10), f"{lo:.3g}", fill="black")
        draw.text((x0, y1 + 8), f"epoch {e_lo:g}", fill="black")
        draw.text((x1 - 60, y1 + 8), f"epoch {e_hi:g}", fill="black")
        for i, (name, vs) in enumerate(series.items()):
            color = _COLORS[i % len(_COLORS)]
            pts = [xy(e, v) for e, v in zip(epochs, vs, strict=True) if not math.isnan(v)]
            if len(pts) > 1:
                draw.line(pts, fill=color, width=2)
            for x, y in pts:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
            draw.text((x0 + 8, y0 + 8 + 14 * i), name, fill=color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


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


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike[str],
) -> None:
    """Write a confusion matrix (row = true class, column = predicted) as a PNG heat map.

    Cells are shaded by the share of their row (the per-class recall on the diagonal);
    counts are printed up to 20 classes and class names up to 30.
    """
    import io

    from PIL import Image, ImageDraw

    n = len(matrix)
    if n == 0:
        return
    cell = max(1, min(40, 640 // n))
    margin = 70 if n <= 30 else 20
    side = margin + n * cell
    top = 44 if n <= 30 else 24
    img = Image.new("RGB", (side + 10, side + top), "white")
    draw = ImageDraw.Draw(img)
    draw.text((margin, 4), "confusion matrix: rows = true class, columns = predicted", fill="black")
    if n <= 30:
        for j in range(n):
            name = str(classes[j]) if j < len(classes) else str(j)
            draw.text((margin + j * cell + 2, 26), name[: max(1, cell // 7)], fill="black")
    for i, row in enumerate(matrix):
        total = max(1, sum(row))
        for j, count in enumerate(row):
            share = count / total
            shade = (int(255 - 225 * share), int(255 - 180 * share), 255)  # white -> blue
            x, y = margin + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade, outline="#e0e0e0" if cell > 4 else None)
            if n <= 20 and count:
                draw.text((x + 3, y + cell // 3), str(count), fill="black" if share < 0.6 else "white")
        if n <= 30:
            name = str(classes[i]) if i < len(classes) else str(i)
            draw.text((4, top + i * cell + cell // 3), name[:10], fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
