"""Predictions for image files: what ``pretrain predict`` runs.

Each file is decoded with Pillow (any format it reads, EXIF orientation applied),
converted to the model's channels, passed through the spec's ``data.val`` pipeline
(the deterministic evaluation transforms), and, when the result is not
``data.image_size`` square (else the validation dataset's image size), resized
(shorter side, antialiased) and centre-cropped to it. Same-sized images are
batched; the model's ``predict`` gives the softmax scores, under the spec's
``train.precision`` like evaluation. Class names come from the run
directory's ``classes.json`` (written by ``pretrain train``), else from the spec's
dataset, else they are the label indices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.engine.distributed import resolve_device
from pretrain.engine.evaluate import autocast_context, model_num_classes, to_memory_format
from pretrain.engine.run_state import load_weights
from pretrain.engine.rundir import RunDir
from pretrain.engine.sharded import load_weights_file
from pretrain.errors import PretrainError

__all__ = ["Prediction", "Predictor", "collect_images", "input_size", "read_image"]

_EVAL_SEED = 0


def _extensions() -> frozenset[str]:
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into image files (folders: recursively, sorted; hidden entries skipped).

    Raises:
        PretrainError: A path that does not exist, or no image at all.

    """
    extensions = _extensions()
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            inside = []
            for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                inside += [Path(dirpath) / f for f in filenames
                           if not f.startswith(".") and Path(f).suffix.lower() in extensions]
            found += sorted(inside)
        elif path.is_file():
            found.append(path)  # an explicit file is read whatever its suffix says
        else:
            raise PretrainError(f"{path} does not exist", hint="Pass image files and/or folders of images.")
    if not found:
        raise PretrainError(
            f"no image files in {', '.join(str(i) for i in inputs)}",
            hint="Pass image files, or folders holding files Pillow reads (.png, .jpg, .webp, ...).",
        )
    return found


def read_image(path: str | os.PathLike[str], channels: int) -> Tensor:
    """Decode ``path`` as uint8 (channels, H, W) (EXIF orientation applied, 16-bit gray scaled).

    Raises:
        PretrainError: Pillow cannot read the file (the path and the reason are named).

    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                wide = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if img.mode.startswith("I;16") else max(float(wide.max()), 1.0)
                img = Image.fromarray(np.round(wide * (255.0 / peak)).clip(0, 255).astype(np.uint8))
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise PretrainError(f"cannot read image {str(path)!r}: {type(exc).__name__}: {exc}",
                            hint="Remove the file from the list, or convert it to PNG/JPEG.") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (C, H, W)


def input_size(spec: Any) -> int | None:
    """The square side a spec's model sees: ``data.image_size``, else its val (or train) dataset's image size."""
    data = spec.sections.get("data")
    if data is None:
        return None
    if data.options.image_size is not None:
        return int(data.options.image_size)
    split = data.val or data.train
    if split is None:
        return None
    from pretrain.assembly.assemble import build_node

    shape = build_node(split.dataset).image_shape()
    return int(shape[1]) if shape is not None and shape[1] == shape[2] else None


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image.

    Attributes:
        path: The file.
        labels: Class indices, best first.
        classes: Their names.
        scores: Their softmax scores.

    """

    path: str
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    scores: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"path", "predictions": [{"label", "class", "score"}, ...]}``."""
        return {"path": self.path, "predictions": [
            {"label": lb, "class": c, "score": s}
            for lb, c, s in zip(self.labels, self.classes, self.scores, strict=True)
        ]}


class Predictor:
    """A spec's model with loaded weights, ready to classify image files.

    Args:
        spec: A validated spec whose model predicts classes.
        weights: A weights file or a run directory (its best, else last, weights).
        device: ``auto``, ``cpu``, ``cuda``... (default: the spec's ``train.device``).

    Raises:
        PretrainError: A model without classes, weights that do not fit.

    """

    def __init__(self, spec: Any, weights: str | Path, device: str | None = None) -> None:
        from pretrain.assembly.assemble import build_node

        train = spec.sections.get("train")
        data = spec.sections.get("data")
        self.precision = train.precision if train is not None else "fp32"
        self.device = resolve_device(device or (train.device if train is not None else "auto"))
        self.weights = RunDir.resolve_weights(weights, "best")
        tensors, _ = load_weights_file(self.weights)
        model: nn.Module = build_node(spec.model, init=False)
        load_weights(model, tensors, self.weights)
        self.model = model.to(self.device).eval()
        num_classes = model_num_classes(model)
        if num_classes is None or not callable(getattr(model, "predict", None)):
            raise PretrainError(
                f"{type(model).__name__} predicts no dataset classes (e.g. a self-supervised model), "
                "so there is nothing to predict",
                hint="Use a classifier spec (ImageClassifier with a head), e.g. a fine-tuning or "
                "linear-probe spec initialised from these weights.",
            )
        self.num_classes = num_classes
        self.channels = int(getattr(model, "in_channels", 3) or 3)
        self.image_size = input_size(spec)
        split = data.val if data is not None and data.val is not None else None
        self.pipeline = self._pipeline(split)
        self.classes = self._classes(weights, data)
        self.channels_last = bool(train is not None and train.channels_last and self.device.type == "cuda")

    @staticmethod
    def _pipeline(split: Any) -> Callable[[Tensor], Tensor]:
        from pretrain.assembly.assemble import build_node
        from pretrain.components import Pipeline
        from pretrain.spec.context import ComponentNode

        if split is None or not split.pipeline:
            return lambda x: x
        pipeline = Pipeline([build_node(t) if isinstance(t, ComponentNode) else t for t in split.pipeline])

        def run(x: Tensor) -> Tensor:
            out = pipeline(x, generator=torch.Generator().manual_seed(_EVAL_SEED))
            if not isinstance(out, Tensor):
                raise PretrainError(
                    f"{split.loc}.pipeline makes views or masks, which a classifier cannot predict from",
                    hint="Predict with a spec whose data.val pipeline only resizes/crops.",
                )
            return out

        return run

    def _classes(self, weights: str | Path, data: Any) -> tuple[str, ...]:
        run = RunDir.for_weights(weights)
        names = run.read_classes() if run is not None else None
        if names is None and data is not None:  # a run without classes.json: the spec's dataset
            split = data.train or data.val
            try:
                from pretrain.assembly.assemble import build_node

                names = [str(c) for c in build_node(split.dataset).classes]
            except PretrainError:
                names = None
        if names is None or len(names) != self.num_classes:
            return tuple(str(i) for i in range(self.num_classes))
        return tuple(names)

    def prepare(self, path: str | os.PathLike[str]) -> Tensor:
        """One file as the model's uint8 (C, H, W) input (decode, val pipeline, resize/crop)."""
        image = self.pipeline(read_image(path, self.channels))
        size = self.image_size
        if size is not None and tuple(image.shape[-2:]) != (size, size):
            from torchvision.transforms.v2 import functional as tvf

            image = tvf.center_crop(tvf.resize(image, [size], antialias=True), [size, size])
        return image

    @torch.no_grad()
    def predict_batch(self, images: Tensor) -> Tensor:
        """Softmax scores (N, num_classes) of uint8 images (N, C, H, W)."""
        x = to_memory_format(images.to(self.device), self.channels_last)
        with autocast_context(self.device, self.precision):
            predict: Any = self.model.predict
            scores: Tensor = predict(x)["scores"]
        return scores.float().cpu()

    def predict(
        self, paths: Sequence[str | os.PathLike[str]], *, topk: int = 1, batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[Prediction]:
        """Yield the top-``topk`` predictions of every file, in order.

        Args:
            paths: Image files.
            topk: Classes per image (at most the model's class count).
            batch_size: Images per forward pass.
            on_batch: Called with the number of images done after each batch (progress).

        """
        k = min(topk, self.num_classes)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = [self.prepare(p) for p in chunk]
            # Same-sized runs share one forward (sizes differ only without data.image_size).
            groups: list[list[int]] = []
            for i, img in enumerate(images):
                if groups and images[groups[-1][0]].shape == img.shape:
                    groups[-1].append(i)
                else:
                    groups.append([i])
            for group in groups:
                scores = self.predict_batch(torch.stack([images[i] for i in group]))  # (n, K)
                top = scores.topk(k, dim=1)
                for row, i in enumerate(group):
                    labels = tuple(int(v) for v in top.indices[row])
                    yield Prediction(str(chunk[i]), labels, tuple(self.classes[lb] for lb in labels),
                                     tuple(float(v) for v in top.values[row]))
            if on_batch is not None:
                on_batch(len(chunk))
