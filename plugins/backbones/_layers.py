"""Small building blocks shared by the built-in backbones.

``DropPath`` is stochastic depth (Huang et al., 2016, "Deep Networks with
Stochastic Depth"), as in MMCV/timm. ``make_divisible`` is the channel-rounding
rule of MobileNetV2 (Sandler et al., 2018), as in MMPretrain's
``models/utils/make_divisible.py``. ``ConvBNAct`` is MMCV's ``ConvModule`` in
its conv → BN → activation order, restricted to what the CNN backbones use.
``SELayer`` is the squeeze-and-excitation block (Hu et al., 2018) as used by
MobileNetV3.

The rest are helpers for backbone authors: ``index_issues`` (the shared
``out_indices`` check for ``spec_issues``), ``first_issue_error`` (the same
checks as a ``ValueError`` for direct construction), ``freeze``/``set_norm_eval``
(``frozen_stages``/``norm_eval``), ``maybe_checkpoint`` (``with_cp``), ``FrozenStagesMixin`` (the matching ``train``
and the staged forward loop) and ``inherit_args_doc`` (a variant class
reusing its base's documented fields, which the spec schema reads).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal, TypeVar

import torch.utils.checkpoint as cp
from torch import Tensor, nn

__all__ = [
    "ActName",
    "ConvBNAct",
    "DropPath",
    "FrozenStagesMixin",
    "SELayer",
    "build_activation",
    "drop_path",
    "first_issue_error",
    "freeze",
    "index_issues",
    "inherit_args_doc",
    "make_divisible",
    "maybe_checkpoint",
    "set_norm_eval",
]

#: Activation names understood by :func:`build_activation`.
ActName = Literal["ReLU", "ReLU6", "HSwish", "HSigmoid", "GELU", "SiLU"]


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Drop whole samples of a residual branch with probability ``drop_prob``.

    Kept samples are scaled by ``1 / (1 - drop_prob)`` so the expectation is
    unchanged. A no-op outside training or when ``drop_prob == 0``.

    Args:
        x: Branch output, any shape with the batch first.
        drop_prob: Probability of dropping a sample's branch.
        training: Whether the module is in training mode.

    Returns:
        ``x`` with some samples zeroed and the rest rescaled.

    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    # One Bernoulli draw per sample, broadcast over every other dim.
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep_prob)
    return x.div(keep_prob) * mask


class DropPath(nn.Module):
    """Stochastic depth per sample, applied to a residual branch.

    Args:
        drop_prob: Probability of dropping the branch for a sample, in [0, 1).

    """

    def __init__(self, drop_prob: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        """Apply stochastic depth (identity in eval mode)."""
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def make_divisible(
    value: float, divisor: int, min_value: int | None = None, min_ratio: float = 0.9
) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (MobileNet channel rule).

    Args:
        value: The raw channel count (e.g. ``32 * widen_factor``).
        divisor: The multiple to round to.
        min_value: Lower bound of the result; defaults to ``divisor``.
        min_ratio: The result is bumped up by ``divisor`` if rounding would
            lose more than ``1 - min_ratio`` of ``value``.

    Returns:
        The rounded channel count.

    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    # Make sure that rounding down does not go down by more than (1 - min_ratio).
    if new_value < min_ratio * value:
        new_value += divisor
    return new_value


def build_activation(name: ActName | None) -> nn.Module:
    """Return a fresh activation module for ``name`` (``None`` → identity).

    ``HSigmoid`` is MMCV's default ``HSigmoid(bias=3, divisor=6)``, i.e.
    ``relu6(x + 3) / 6``, which equals ``nn.Hardsigmoid``.
    """
    if name is None:
        return nn.Identity()
    table: dict[str, type[nn.Module]] = {
        "ReLU": nn.ReLU,
        "ReLU6": nn.ReLU6,
        "HSwish": nn.Hardswish,
        "HSigmoid": nn.Hardsigmoid,
        "GELU": nn.GELU,
        "SiLU": nn.SiLU,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")
    cls = table[name]
    return cls() if name == "GELU" else cls(inplace=True)


class ConvBNAct(nn.Sequential):
    """``Conv2d`` (no bias) → ``BatchNorm2d`` → activation, named ``conv``/``bn``/``activate``.

    The child names are MMCV's ``ConvModule``'s, so state-dict keys match
    MMPretrain checkpoints (``conv1.conv.weight``, ``conv1.bn.running_mean``).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
        padding: Zero padding; defaults to ``kernel_size // 2``.
        groups: Convolution groups (``in_channels`` for depthwise).
        act: Activation name, or ``None`` for no activation.
        bn_eps: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (PyTorch convention).

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        act: ActName | None = "ReLU",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = kernel_size // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.activate = build_activation(act)


class SELayer(nn.Module):
    """Squeeze-and-excitation: channel gates from globally pooled features.

    Matches MMPretrain's ``SELayer`` as configured by MobileNetV3
    (``ratio=4``, ``divisor=8``, ReLU then HSigmoid, 1×1 convs with bias, no BN).

    Args:
        channels: Channels of the input (and output).
        squeeze_channels: Channels of the bottleneck; defaults to
            ``make_divisible(channels // ratio, divisor)``.
        ratio: Squeeze ratio used when ``squeeze_channels`` is not given.
        divisor: Rounding divisor for the bottleneck width.
        gate: Activation producing the gates.

    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int | None = None,
        ratio: int = 16,
        divisor: int = 8,
        gate: ActName = "HSigmoid",
    ) -> None:
        super().__init__()
        if squeeze_channels is None:
            squeeze_channels = make_divisible(channels // ratio, divisor)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        # MMCV ConvModule(..., act_cfg=ReLU) without norm: conv has a bias.
        self.conv1 = nn.Sequential()
        self.conv1.add_module("conv", nn.Conv2d(channels, squeeze_channels, 1, bias=True))
        self.conv1.add_module("activate", nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential()
        self.conv2.add_module("conv", nn.Conv2d(squeeze_channels, channels, 1, bias=True))
        self.conv2.add_module("activate", build_activation(gate))

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel of ``x`` by a learned gate in [0, 1]."""
        w = self.global_avgpool(x)  # (B, C, 1, 1)
        w = self.conv2(self.conv1(w))  # (B, C, 1, 1)
        return x * w


def index_issues(
    field: str, indices: Sequence[int], count: int, what: str = "stage"
) -> Iterator[tuple[str, str]]:
    """Validate ``out_indices``-like values against ``count`` outputs.

    Each index must be in ``0..count-1``; the sequence must be non-empty and
    strictly increasing, because the backbone returns one tensor per entry in
    network order (so an unsorted or repeated index could not be honoured).

    Args:
        field: Field name to report the issue under.
        indices: The requested indices.
        count: Number of available outputs.
        what: What an index selects, for the message (``stage``, ``layer``).

    Yields:
        ``(field, message)`` pairs, as ``spec_issues`` expects.

    """
    values = list(indices)
    if not values:
        yield field, f"must name at least one {what} (0..{count - 1})"
        return
    bad = [i for i in values if not 0 <= i < count]
    if bad:
        yield field, (
            f"{bad} out of range: this network has {count} {what}s, so each index must be "
            f"in 0..{count - 1} (negative indices are not accepted)"
        )
    elif any(b <= a for a, b in itertools.pairwise(values)):
        yield field, (
            f"{values} must be strictly increasing (outputs come back in network order, "
            "one per index)"
        )


def maybe_checkpoint(fn: Callable[[Tensor], Tensor], x: Tensor, enabled: bool) -> Tensor:
    """``fn(x)``, with activation checkpointing (recomputed in backward) if ``enabled``.

    Checkpointing is skipped when ``x`` needs no gradient (nothing to save memory for).
    """
    if enabled and x.requires_grad:
        out: Tensor = cp.checkpoint(fn, x, use_reentrant=False)
        return out
    return fn(x)


def first_issue_error(cls: type, issues: Iterable[tuple[str, str]]) -> None:
    """Raise ``ValueError`` for the first issue, for direct (non-spec) construction."""
    for field, msg in issues:
        raise ValueError(f"{cls.__name__}: {field}: {msg}")


def set_norm_eval(module: nn.Module) -> None:
    """Put every BatchNorm of ``module`` in eval mode (freeze its running statistics)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def freeze(module: nn.Module) -> None:
    """Stop gradients for ``module``'s parameters and put it in eval mode."""
    module.eval()
    for param in module.parameters():
        param.requires_grad = False


_M = TypeVar("_M", bound="FrozenStagesMixin")


class FrozenStagesMixin(nn.Module):
    """``train``/forward plumbing of a CNN backbone built as named stages.

    Put it before the base class (``class X(FrozenStagesMixin, BaseBackbone)``); the
    backbone sets ``norm_eval`` and ``out_indices`` and defines ``_freeze_stages``.
    """

    norm_eval: bool
    out_indices: tuple[int, ...]

    def _freeze_stages(self) -> None:
        raise NotImplementedError

    def train(self: _M, mode: bool = True) -> _M:
        """Set train/eval mode, keeping frozen stages (and BN with ``norm_eval``) in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            set_norm_eval(self)
        return self

    def _forward_stages(self, x: Tensor, names: Sequence[str]) -> tuple[Tensor, ...]:
        """Run the child modules ``names`` in order; keep the outputs at ``out_indices``."""
        outs = []
        for i, name in enumerate(names):
            x = getattr(self, name)(x)  # (B, C_i, H_i, W_i)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


def inherit_args_doc(cls: type, base: type, overrides: Mapping[str, str]) -> None:
    """Append ``base``'s ``Args:`` section to ``cls.__doc__``, replacing some entries.

    Spec field descriptions come from the class docstring, so a variant that
    only pins a few fields documents the rest by reusing its base's text.

    Args:
        cls: The variant whose docstring is extended.
        base: The class whose ``Args:`` section is reused.
        overrides: New descriptions for some arguments.

    """
    base_doc = inspect.cleandoc(base.__doc__ or "")
    _, _, args = base_doc.partition("\nArgs:\n")
    entries: list[tuple[str, list[str]]] = []
    for line in args.splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            name, _, text = line.strip().partition(":")
            entries.append((name, [text.strip()]))
        elif line.strip() and entries:
            entries[-1][1].append(line.strip())
    lines = ["Args:"]
    for name, parts in entries:
        lines.append(f"    {name}: {overrides.get(name, ' '.join(parts))}")
    cls.__doc__ = inspect.cleandoc(cls.__doc__ or "") + "\n\n" + "\n".join(lines) + "\n"
