"""The optimizer of ``[train.optimizer]`` (a registered component), with per-parameter multipliers.

Parameter groups follow MMPretrain's ``paramwise_cfg`` /
``LearningRateDecayOptimWrapperConstructor`` semantics:

- ``norm_decay_mult`` / ``bias_decay_mult`` / ``flat_decay_mult`` scale the weight
  decay of normalisation parameters, biases, and all 1-D parameters;
- ``layer_decay_rate`` gives a parameter at layer ``d`` of ``n`` the learning rate
  ``lr * rate ** (n - d - 1)``, with ``(d, n)`` from the backbone's ``get_layer_depth``;
- ``custom_keys`` multiply LR / decay of parameters whose name contains the key
  (the longest matching key wins; MMPretrain picks the first in sorted order).

Each group records its ``base_lr`` so the schedule sets ``lr = base_lr * factor``.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

from pretrain.errors import PretrainError
from pretrain.spec.context import ComponentNode
from pretrain.spec.sections import ParamwiseConfig

__all__ = ["build_optimizer", "param_groups"]

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _norm_param_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower():
            for p_name, _ in module.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def _layer_depth_fn(model: nn.Module) -> Any:
    """Return ``name -> (layer_id, num_layers)`` for layer-wise LR decay."""
    own = getattr(model, "get_layer_depth", None)
    if callable(own):
        return own
    backbone = getattr(model, "backbone", None)
    bb_depth = getattr(backbone, "get_layer_depth", None)
    if not callable(bb_depth):
        raise PretrainError(
            f"train.paramwise.layer_decay_rate: {type(model).__name__} has no backbone with "
            "get_layer_depth(), so layer-wise LR decay cannot be applied.",
            hint="Remove layer_decay_rate, or use a backbone that provides get_layer_depth "
            "(ViT, ResNet-50 and deeper, ...).",
        )

    assert isinstance(backbone, nn.Module)
    first = next(n for n, _ in backbone.named_parameters())
    num_layers = int(bb_depth(first)[1])

    def depth(name: str) -> tuple[int, int]:
        if name.startswith("backbone."):
            layer_id, n = bb_depth(name[len("backbone."):])
            return int(layer_id), int(n)
        # Neck/head parameters sit after the last backbone layer: no decay.
        return num_layers - 1, num_layers

    return depth


def param_groups(
    model: nn.Module, base_lr: float, weight_decay: float, paramwise: ParamwiseConfig | None
) -> list[dict[str, Any]]:
    """Split the trainable parameters into groups of equal (lr, weight_decay, options).

    Options come from ``paramwise.custom_keys`` (``lars_exclude``) and from the model's
    optional ``param_group_options()`` (``{"name prefix": {"fix_lr": True}}``, e.g.
    SimSiam's predictor trained at the base learning rate).

    Args:
        model: The (unwrapped) model.
        base_lr: The optimizer's ``lr``.
        weight_decay: The optimizer's ``weight_decay``.
        paramwise: Multipliers, or None.

    Returns:
        ``torch.optim`` parameter groups, each with ``lr``, ``weight_decay``, ``base_lr``
        and any options; groups are ordered by first appearance, so the layout is
        deterministic.

    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise PretrainError("the model has no trainable parameters", hint="check frozen_stages")
    options_fn = getattr(model, "param_group_options", None)
    model_options: dict[str, dict[str, Any]] = dict(options_fn()) if callable(options_fn) else {}
    prefixes = sorted(model_options, key=len, reverse=True)
    norms = _norm_param_names(model) if paramwise is not None else set()
    depth = _layer_depth_fn(model) if paramwise is not None and paramwise.layer_decay_rate is not None else None
    keys = sorted(paramwise.custom_keys, key=len, reverse=True) if paramwise is not None else []
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for name, param in named:
        lr_mult, decay_mult, options = 1.0, 1.0, {}
        if paramwise is not None:
            if paramwise.flat_decay_mult is not None and param.ndim == 1:
                decay_mult = paramwise.flat_decay_mult
            if paramwise.bias_decay_mult is not None and name.endswith(".bias"):
                decay_mult = paramwise.bias_decay_mult
            if paramwise.norm_decay_mult is not None and name in norms:
                decay_mult = paramwise.norm_decay_mult
            if depth is not None:
                layer_id, num_layers = depth(name)
                lr_mult *= float(paramwise.layer_decay_rate or 1.0) ** (num_layers - layer_id - 1)
            key = next((k for k in keys if k in name), None)
            if key is not None:
                custom = paramwise.custom_keys[key]
                lr_mult *= custom.lr_mult
                decay_mult *= custom.decay_mult
                if custom.lars_exclude:
                    options["lars_exclude"] = True
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is not None:
            options.update(model_options[prefix])
        lr, wd = base_lr * lr_mult, weight_decay * decay_mult
        group_key = (lr, wd, *sorted(options.items()))
        group = groups.setdefault(group_key, {"params": [], "lr": lr, "weight_decay": wd, "base_lr": lr,
                                              "names": [], **options})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, node: ComponentNode, paramwise: ParamwiseConfig | None = None) -> Optimizer:
    """Build ``[train.optimizer]`` (a validated optimizer component) over ``model``'s trainable parameters.

    Args:
        model: The unwrapped model (parameter names without a DDP ``module.`` prefix).
        node: The validated ``train.optimizer`` table.
        paramwise: Optional per-parameter multipliers.

    Returns:
        The optimizer; every group carries ``base_lr`` for the schedule.

    """
    fields = dict(node.params)
    groups = param_groups(model, float(fields["lr"]), float(fields.get("weight_decay", 0.0)), paramwise)
    try:
        optimizer = node.cls(groups, **fields)
    except Exception as exc:
        r = node.record
        raise PretrainError(
            f"{node.loc}: building optimizer {node.type_name!r} failed: {type(exc).__name__}: {exc}",
            hint=f"Check its fields (pretrain describe {node.type_name}); {r.value} comes from {r.distribution} "
            f"{r.version}.",
        ) from exc
    if not isinstance(optimizer, Optimizer):  # pragma: no cover - the registry checks the class
        raise PretrainError(f"{node.loc}: {node.type_name!r} did not build a torch.optim.Optimizer")
    return optimizer
