"""The channels-last memory format, with a guard against a oneDNN defect on CPU.

oneDNN (PyTorch's CPU convolution library) has a bug in the backward-weights pass of
*strided 1x1* convolutions on channels-last (NHWC) inputs whose input channels per
group are fewer than the ISA's vector block (8 floats on AVX2, 16 on AVX-512): it
writes past its workspace (upstream oneDNN issue #6035, open as of PyTorch 2.14.1).
With one thread the process aborts (``corrupted double-linked list``); with several
it silently corrupts the weight gradients, so the same seed gives different models.
ResNet downsample shortcuts at small widths and MobileNet-style blocks hit it.

:func:`to_channels_last` converts a model like ``model.to(memory_format=channels_last)``
but, on CPU, keeps every such convolution in the contiguous (NCHW) format: its weight
stays contiguous and a forward pre-hook makes its input contiguous, which routes it
to oneDNN's NCHW kernels (unaffected). The choice is made once per model. The
threshold is 16 whatever the CPU, because the vector width oneDNN picks can be
capped at run time (``ONEDNN_MAX_CPU_ISA``) and a too-large threshold only costs
the layout change of a few narrow layers. Drop this guard once the minimum
supported PyTorch ships a fixed oneDNN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ONEDNN_SAFE_CHANNELS", "guard_note", "needs_contiguous_guard", "to_channels_last"]

#: Input channels (per group) from which oneDNN's strided 1x1 NHWC backward is safe.
ONEDNN_SAFE_CHANNELS = 16


def needs_contiguous_guard(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution that oneDNN mishandles in channels-last on CPU."""
    if not isinstance(module, nn.Conv2d):
        return False
    one_by_one = tuple(module.kernel_size) == (1, 1)
    strided = any(s > 1 for s in module.stride)
    narrow = module.in_channels // module.groups < ONEDNN_SAFE_CHANNELS
    return one_by_one and strided and narrow


def _canonical(t: Tensor) -> Tensor:
    """``t`` with row-major strides.

    ``contiguous()`` is not enough: a (C_out, C_in, 1, 1) weight in channels-last has
    strides (C_in, 1, C_in, C_in), which ``is_contiguous()`` accepts (size-1 dims do not
    count) but oneDNN's format choice reads as channels-last.
    """
    expected, step = [], 1
    for size in reversed(t.shape):
        expected.append(step)
        step *= size
    if t.stride() == tuple(reversed(expected)):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _contiguous_input(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    if isinstance(x, Tensor):
        return (_canonical(x), *args[1:])
    return args


def to_channels_last(model: nn.Module, device: torch.device) -> list[str]:
    """Convert ``model`` to channels-last in place, guarding the convolutions oneDNN breaks.

    Args:
        model: The model, already on ``device``.
        device: Where it runs; the guard applies on CPU only (CUDA's kernels are fine).

    Returns:
        Names of the convolutions kept contiguous (empty off CPU), for the log.

    """
    model.to(memory_format=torch.channels_last)
    if device.type != "cpu":
        return []
    guarded: list[str] = []
    for name, module in model.named_modules():
        if not needs_contiguous_guard(module):
            continue
        assert isinstance(module, nn.Conv2d)
        with torch.no_grad():
            module.weight.data = _canonical(module.weight.data)
        module.register_forward_pre_hook(_contiguous_input)
        guarded.append(name)
    return guarded


def guard_note(guarded: list[str]) -> str:
    """The one-line log note naming the convolutions :func:`to_channels_last` kept contiguous."""
    shown = ", ".join(guarded[:4]) + (" ..." if len(guarded) > 4 else "")
    return (f"note: {len(guarded)} strided 1x1 convolution(s) with fewer than {ONEDNN_SAFE_CHANNELS} "
            f"input channels stay contiguous on CPU (oneDNN issue #6035): {shown}")
