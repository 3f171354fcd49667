"""Component kinds, entry-point discovery, isolated loading, schemas and pluggy hooks.

The lowest layer of the core above :mod:`pretrain.errors`; torch-free. Listing reads
entry-point metadata only (no plugin module, no pydantic); schemas are derived on
first load.
"""

from __future__ import annotations

from pretrain.registry.kinds import KIND_INFO, KINDS, PLUGIN_GROUP, ComponentRef, KindInfo
from pretrain.registry.records import EntryRecord, LoadFailure
from pretrain.registry.registry import BUILTIN_DISTRIBUTION, Registry, get_registry, normalize_dist, set_registry

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "KINDS",
    "KIND_INFO",
    "PLUGIN_GROUP",
    "ComponentRef",
    "EntryRecord",
    "KindInfo",
    "LoadFailure",
    "Registry",
    "get_registry",
    "normalize_dist",
    "set_registry",
]
