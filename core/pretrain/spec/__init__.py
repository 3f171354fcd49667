"""Specs: files (TOML/JSON, ``extends``, ``--set``), validation with spec paths, sections, JSON Schema.

Torch-free: ``pretrain validate`` and ``pretrain schema`` check a spec without
importing the training runtime. Runtime code (:mod:`pretrain.engine`) consumes the
validated sections.
"""

from __future__ import annotations

from pretrain.spec.context import ComponentNode, ValidationContext
from pretrain.spec.files import load_spec
from pretrain.spec.validate import ValidatedSpec, validate_spec

__all__ = ["ComponentNode", "ValidatedSpec", "ValidationContext", "load_spec", "validate_spec"]
