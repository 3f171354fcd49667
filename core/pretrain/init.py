"""Weight-initialisation rules for Python users: validate rules, apply them, load checkpoints.

One import for notebook and plugin code; the rules are defined (torch-free) in
:mod:`pretrain.spec.init_rules`, applied by :mod:`pretrain.assembly.weight_init`, and
``Pretrained`` checkpoints are read by :mod:`pretrain.assembly.pretrained`.
"""

from __future__ import annotations

from pretrain.assembly.pretrained import LoadReport, load_pretrained
from pretrain.assembly.weight_init import apply_init
from pretrain.spec.init_rules import (
    INIT_RULES_ADAPTER,
    Constant,
    Kaiming,
    Normal,
    Pretrained,
    Rule,
    TruncNormal,
    Uniform,
    ValueRule,
    Xavier,
    init_rules_json_schema,
    rule_to_toml,
    validate_init,
)

__all__ = [
    "INIT_RULES_ADAPTER",
    "Constant",
    "Kaiming",
    "LoadReport",
    "Normal",
    "Pretrained",
    "Rule",
    "TruncNormal",
    "Uniform",
    "ValueRule",
    "Xavier",
    "apply_init",
    "init_rules_json_schema",
    "load_pretrained",
    "rule_to_toml",
    "validate_init",
]
