"""Exporting a trained model for deployment: ONNX, TorchScript or a ``torch.export`` program.

The exported graph takes what the training data is made of, uint8 images
(N, C, H, W) in 0..255, and returns the model's ``forward`` output (a classifier's
logits (N, num_classes)). The model's own preprocessing (conversion to float,
``mean``/``std`` normalisation, grey-to-RGB) is inside the graph, so a deployment
feeds decoded pixels and nothing else; resizing to ``H``×``W`` (``data.image_size``)
is the caller's. The batch dimension is dynamic in every format.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pretrain.engine.run_state import load_weights
from pretrain.engine.rundir import RunDir
from pretrain.engine.sharded import load_weights_file
from pretrain.errors import PretrainError

__all__ = ["FORMATS", "ImagesToOutput", "export_model", "load_for_export"]

FORMATS = ("onnx", "torchscript", "exported-program")
Format = Literal["onnx", "torchscript", "exported-program"]


class ImagesToOutput(nn.Module):
    """uint8 images (N, C, H, W) -> the model's ``forward`` (a classifier's logits), preprocessing included."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        """``model(images)``; the model normalises the 0..255 input itself."""
        out = self.model(images)
        if isinstance(out, tuple | list):  # a backbone-only model: its last feature map
            out = out[-1]
        if not isinstance(out, Tensor):
            raise PretrainError(f"{type(self.model).__name__}.forward returns {type(out).__name__}, not a tensor",
                                hint="Export a classifier (ImageClassifier with a head).")
        return out


def load_for_export(spec: Any, weights: str | Path) -> tuple[nn.Module, Path]:
    """Build the spec's model on the CPU, load ``weights`` (a file, sharded index or run directory), eval mode."""
    from pretrain.assembly.assemble import build_node

    path = RunDir.resolve_weights(weights, "best")
    tensors, _ = load_weights_file(path)
    model: nn.Module = build_node(spec.model, init=False)
    load_weights(model, tensors, path)
    return model.eval(), path


def export_model(
    model: nn.Module, out: str | Path, *, fmt: Format, channels: int, size: tuple[int, int], opset: int | None = None,
) -> Path:
    """Write ``model`` (eval mode) as ``fmt`` to ``out`` with a dynamic batch dimension.

    Args:
        model: The task model.
        out: Output file.
        fmt: ``onnx``, ``torchscript`` or ``exported-program``.
        channels: Input channels.
        size: Input ``(H, W)``.
        opset: ONNX opset (default: the exporter's).

    Raises:
        PretrainError: The exporter (or its extra) is missing, or the model cannot be exported.

    """
    wrapper = ImagesToOutput(model).eval()
    example = torch.randint(0, 256, (2, channels, *size), dtype=torch.uint8)  # (N, C, H, W)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            if fmt == "onnx":
                import importlib.util

                missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
                if missing:
                    raise PretrainError(f"ONNX export needs {' and '.join(missing)}, which is not installed",
                                        hint="pip install 'pretrain[onnx]'")
                program = torch.onnx.export(
                    wrapper, (example,), dynamo=True, input_names=["images"], output_names=["output"],
                    dynamic_shapes={"images": {0: batch}}, opset_version=opset, verbose=False,
                )
                assert program is not None
                program.save(str(out))
            elif fmt == "torchscript":
                warnings.filterwarnings("ignore", message=".*[Tt]race.*")  # TracerWarnings about Python bools
                traced: Any = torch.jit.trace(wrapper, (example,), check_trace=False)  # type: ignore[no-untyped-call]
                traced.save(str(out))
            else:
                ep = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}})
                torch.export.save(ep, str(out))
    except PretrainError:
        raise
    except Exception as exc:
        raise PretrainError(
            f"{type(model).__name__} could not be exported as {fmt}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ''}",
            hint="Try another --format (exported-program is the most permissive), or run with --debug "
            "for the exporter's full message.",
        ) from exc
    return out
