"""pretrain-acme: an example plugin package for pretrain.

Components are registered by the entry points in ``pyproject.toml``, not by
importing this package: importing it has no side effects.
"""

__version__ = "0.1.0"
