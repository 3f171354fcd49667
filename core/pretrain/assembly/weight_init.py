"""Applying weight-initialisation rules to built components (the ``init`` key).

The rules themselves are validated by :mod:`pretrain.spec.init_rules`. Where MMEngine
is silent we fail loudly: a rule whose ``layer`` matches no module in the component
(``"Conv2D"``), or only modules without a ``weight``/``bias``, raises
:class:`PretrainError` naming the component and the class names that exist.

The core applies rules after a component is built, top-down, in two passes:
``apply_init(..., pretrained=False)`` for every component (parents before
children, so children's rules win), then ``apply_init(..., pretrained=True)``
so that pretrained weights always land last (MMEngine's order,
``open-mmlab/mmengine#691``). Value rules draw from torch's global RNG, so a
build under ``torch.manual_seed`` is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel

from pretrain.assembly.pretrained import load_pretrained
from pretrain.errors import PretrainError
from pretrain.spec.init_rules import (
    ConstantFields,
    KaimingFields,
    NormalFields,
    OverrideName,
    Pretrained,
    Rule,
    TruncNormalFields,
    UniformFields,
    ValueFields,
    ValueRule,
    XavierFields,
    rule_to_toml,
)

if TYPE_CHECKING:
    from rich.console import Console
    from torch import Tensor, nn

__all__ = ["apply_init"]

_log = logging.getLogger("pretrain.init")




def _class_names(module: nn.Module) -> set[str]:
    """Return the class name and its *direct* bases' names (MMEngine ``_get_bases_name``)."""
    cls = type(module)
    return {cls.__name__, *(base.__name__ for base in cls.__bases__)}


def _own_tensor(module: nn.Module, name: str) -> Tensor | None:
    import torch

    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _has_weight_or_bias(module: nn.Module) -> bool:
    return _own_tensor(module, "weight") is not None or _own_tensor(module, "bias") is not None


def _init_module(module: nn.Module, rule: BaseModel) -> None:
    """Initialise ``module.weight``/``module.bias`` with ``rule`` (MMEngine ``*_init``)."""
    from torch.nn import init

    weight = _own_tensor(module, "weight")
    bias = _own_tensor(module, "bias")
    if weight is not None and not weight.is_meta:
        if isinstance(rule, ConstantFields):
            init.constant_(weight, rule.val)
        elif isinstance(rule, XavierFields):
            fn = init.xavier_uniform_ if rule.distribution == "uniform" else init.xavier_normal_
            fn(weight, gain=rule.gain)
        elif isinstance(rule, NormalFields):
            init.normal_(weight, rule.mean, rule.std)
        elif isinstance(rule, TruncNormalFields):
            init.trunc_normal_(weight, rule.mean, rule.std, rule.a, rule.b)
        elif isinstance(rule, UniformFields):
            init.uniform_(weight, rule.a, rule.b)
        elif isinstance(rule, KaimingFields):
            kfn = init.kaiming_uniform_ if rule.distribution == "uniform" else init.kaiming_normal_
            kfn(weight, a=rule.a, mode=rule.mode, nonlinearity=rule.nonlinearity)
        else:  # pragma: no cover - exhaustive over the rule models
            raise TypeError(f"not a value rule: {rule!r}")
    if bias is not None and not bias.is_meta and isinstance(rule, ValueFields):
        init.constant_(bias, rule.bias_value())


def _available(module: nn.Module) -> str:
    names = sorted({type(m).__name__ for m in module.modules()})
    return ", ".join(names)


def _apply_value_rule(module: nn.Module, rule: ValueRule, loc: str, index: int, *, strict: bool = True) -> None:
    import torch

    where = f"{loc}.init[{index}]"
    with torch.no_grad():
        if rule.layer:
            wanted = set(rule.layer)
            matched = [m for m in module.modules() if _class_names(m) & wanted]
            if not strict and not any(_has_weight_or_bias(m) for m in matched):
                matched = []  # lenient (class defaults): nothing to do for this rule
            elif not matched:
                raise PretrainError(
                    f"{where}: the init rule {rule_to_toml(rule)} matches no layer in "
                    f"{type(module).__name__}. Layer classes present: {_available(module)}.",
                    hint="Fix `layer` to one of the class names above (names are "
                    "case-sensitive; a base-class name such as '_BatchNorm' also matches).",
                )
            elif not any(_has_weight_or_bias(m) for m in matched):
                found = sorted({type(m).__name__ for m in matched})
                raise PretrainError(
                    f"{where}: the init rule {rule_to_toml(rule)} matches only "
                    f"{', '.join(found)}, which have no weight or bias to initialise.",
                    hint="Target layers with parameters (e.g. Conv2d, Linear, BatchNorm2d).",
                )
            # ``Module.apply`` order (children first) as in MMEngine, so the RNG stream
            # and therefore the values match an MMEngine init under the same seed.
            if matched:
                module.apply(lambda m: _init_module(m, rule) if _class_names(m) & wanted else None)
        for entry in rule.override or ():
            name = entry.name
            child = _get_child(module, name)
            if child is None and not strict:
                continue
            if child is None:
                children = ", ".join(n for n, _ in module.named_children()) or "(none)"
                raise PretrainError(
                    f"{where}: the init rule {rule_to_toml(rule)} overrides child {name!r}, "
                    f"but {type(module).__name__} has no such child. Children: {children}.",
                    hint="Set `override` to one of the child names above.",
                )
            sub_rule: BaseModel = rule if isinstance(entry, OverrideName) else entry
            # Whole-module init: every module inside the child, whatever its class.
            child.apply(lambda m, r=sub_rule: _init_module(m, r))  # type: ignore[misc]


def _get_child(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def apply_init(
    module: nn.Module,
    rules: Sequence[Rule],
    *,
    loc: str,
    pretrained: bool,
    strict: bool = True,
    console: Console | None = None,
) -> None:
    """Apply a component's init rules.

    Args:
        module: The built component.
        rules: Validated rules (see :func:`validate_init`).
        loc: Spec path of the component (``model.backbone``) or of its ``init`` key
            (``model.backbone.init``), used in messages.
        pretrained: ``False`` applies the value rules (in order) and skips
            ``Pretrained``; ``True`` applies only the ``Pretrained`` rules.
        strict: A value rule that matches no layer (or an override naming a missing
            child) is an error. ``False`` skips such rules silently; meant for a
            class's ``default_init``, whose rules may not all apply to every
            configuration of the class (user-written rules should stay strict).
        console: Where ``Pretrained`` rules print their key table (else logged).

    Raises:
        PretrainError: A rule matches no layer, an override names a missing child,
            or pretrained weights cannot be loaded.

    """
    # Accept the component path or its ``init`` key (``model.backbone[.init]``).
    base = loc.removesuffix(".init")
    for index, rule in enumerate(rules):
        if isinstance(rule, Pretrained):
            if pretrained:
                load_pretrained(module, rule, loc=f"{base}.init[{index}]", console=console)
        elif not pretrained:
            _apply_value_rule(module, rule, base, index, strict=strict)
            _log.debug("%s.init[%d]: applied %s", base, index, rule_to_toml(rule))
