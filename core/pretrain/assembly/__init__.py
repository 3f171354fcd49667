"""Model assembly: construct validated component trees, initialise weights, load pretrained ones.

Also the meta-device shape check of ``pretrain validate`` (:mod:`pretrain.assembly.shapes`).
"""

from __future__ import annotations

from pretrain.assembly.assemble import build, build_from_spec, build_model, build_node, build_tree

__all__ = ["build", "build_from_spec", "build_model", "build_node", "build_tree"]
