"""``pretrain plugins``: installed plugin distributions, their components, hooks, failures."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "collect", "run", "strict_check"]


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "plugins",
        help="list plugin packages, their components and hooks, and broken ones",
        description=(
            "List every distribution that provides components or hooks, what it provides, "
            "and every component or hook plugin that failed to load (with the error)."
        ),
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def strict_check() -> None:
    """Under ``--strict-plugins`` / ``PRETRAIN_STRICT_PLUGINS=1``, fail if any installed plugin is broken.

    Loads every component and hook plugin (each in isolation, so that all broken ones
    are named at once, not just the first). Outside strict mode it does nothing and
    imports nothing.

    Raises:
        PluginLoadError: One or more plugins are broken; each is named with its
            distribution, version, entry point and error.

    """
    from pretrain.registry.registry import get_registry

    registry = get_registry()
    if not registry.is_strict:
        return
    from pretrain.errors import PluginLoadError
    from pretrain.registry.plugins import load_plugins

    saved = registry.strict
    registry.strict = False  # record every failure instead of raising on the first
    try:
        load_plugins(registry)
        list(registry.check_all())
    finally:
        registry.strict = saved
    failures = registry.failures()
    if failures:
        listed = "; ".join(f.describe() for f in failures)
        raise PluginLoadError(
            f"{len(failures)} installed plugin{'s are' if len(failures) != 1 else ' is'} broken "
            f"(strict mode): {listed}",
            hint="Fix, reinstall or uninstall them (`pretrain plugins` lists what each distribution "
            "provides), or run without --strict-plugins / PRETRAIN_STRICT_PLUGINS=1.",
        )


def collect() -> dict[str, Any]:
    """Gather the report (loads every component and hook plugin, each in isolation)."""
    from pretrain.registry.plugins import load_plugins
    from pretrain.registry.registry import get_registry, normalize_dist

    registry = get_registry()
    pm = load_plugins(registry)
    list(registry.check_all())
    dists: dict[str, dict[str, Any]] = {}

    def entry(dist: str, version: str) -> dict[str, Any]:
        key = normalize_dist(dist)
        return dists.setdefault(
            key, {"distribution": dist, "version": version, "components": [], "hooks": [], "broken": []}
        )

    for record in registry.entries():
        entry(record.distribution, record.version)["components"].append(
            {"kind": record.kind, "name": record.name, "value": record.value, "source": record.source}
        )
    for record in registry.plugin_entry_points():
        plugin = pm.get_plugin(record.qualified_name)
        hooks = sorted(
            impl.hook_name if hasattr(impl, "hook_name") else caller.name
            for caller in (pm.get_hookcallers(plugin) or [] if plugin is not None else [])
            for impl in [caller]
        )
        entry(record.distribution, record.version)["hooks"].append(
            {"name": record.name, "value": record.value, "hooks": hooks, "loaded": plugin is not None}
        )
    for failure in registry.failures():
        r = failure.record
        entry(r.distribution, r.version)["broken"].append(
            {"kind": r.kind, "name": r.name, "value": r.value, "error": failure.error}
        )
    return {"distributions": list(dists.values())}


def run(args: argparse.Namespace) -> int:
    """Print the plugin report."""
    report = collect()
    if args.json:
        from pretrain.cli._console import print_json

        print_json(report)
        return 0
    from rich.markup import escape
    from rich.table import Table

    from pretrain.cli._console import console

    table = Table(title="Plugin distributions", title_justify="left")
    for col in ("distribution", "version", "components", "hooks", "status"):
        table.add_column(col, overflow="fold")
    for dist in report["distributions"]:
        kinds: dict[str, int] = {}
        for comp in dist["components"]:
            kinds[comp["kind"]] = kinds.get(comp["kind"], 0) + 1
        comps = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "-"
        hooks = ", ".join(h for p in dist["hooks"] for h in p["hooks"]) or "-"
        status = "[green]ok[/]" if not dist["broken"] else f"[red]{len(dist['broken'])} broken[/]"
        table.add_row(escape(dist["distribution"]), dist["version"], comps, escape(hooks), status)
    console.print(table)
    for dist in report["distributions"]:
        for b in dist["broken"]:
            console.print(
                f"[red]broken[/] {escape(dist['distribution'])} {dist['version']}: "
                f"{b['kind']} {escape(b['name'])} = {escape(b['value'])}: {escape(b['error'])}"
            )
    return 0
