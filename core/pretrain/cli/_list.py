"""``pretrain list-components``: every installed component, from metadata alone."""

from __future__ import annotations

import argparse
from typing import Any

from pretrain.registry.kinds import KINDS

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "list-components",
        help="list installed components (metadata only: fast, imports nothing)",
        description=(
            "List every installed component: kind, name, distribution, version. Reads "
            "entry-point metadata only; --details imports each component and reports its "
            "summary and status (ok, or broken with the error)."
        ),
    )
    p.add_argument("--kind", choices=list(KINDS), help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--details", action="store_true", help="import each component; add summary/status")
    p.set_defaults(run=run)


def collect(kind: str | None, details: bool) -> list[dict[str, Any]]:
    """Rows for the listing (also used by tests and ``plugins``)."""
    from pretrain.registry.registry import get_registry, top_level_present

    registry = get_registry()
    if details:
        from pretrain.registry.plugins import load_plugins

        load_plugins(registry)
    rows: list[dict[str, Any]] = []
    for record in registry.entries(kind):
        row: dict[str, Any] = {
            "kind": record.kind,
            "name": record.name,
            "qualified_name": record.qualified_name,
            "distribution": record.distribution,
            "version": record.version,
            "value": record.value,
            "source": record.source,
            "status": "ok",
            "error": None,
            "checked": "import" if details else "metadata",
        }
        if details:
            summary, error = _details(registry, record)
            row["summary"] = summary
            if error:
                row["status"], row["error"] = "broken", error
        else:
            error = top_level_present(record)
            if error is None:
                failure = next((f for f in registry.failures() if f.record == record), None)
                error = failure.error if failure else None
            if error:
                row["status"], row["error"] = "broken", error
        rows.append(row)
    names: dict[tuple[str, str], int] = {}
    for row in rows:
        names[(row["kind"], row["name"])] = names.get((row["kind"], row["name"]), 0) + 1
    for row in rows:
        row["ambiguous"] = names[(row["kind"], row["name"])] > 1
    return rows


def _details(registry: Any, record: Any) -> tuple[str, str | None]:
    from pretrain.errors import PluginLoadError
    from pretrain.registry.schema import component_schema

    try:
        cls = registry.load(record)
    except PluginLoadError:
        failure = next((f for f in registry.failures() if f.record == record), None)
        return "", failure.error if failure else "failed to load"
    return component_schema(cls, record.kind, record.name).summary, None


def run(args: argparse.Namespace) -> int:
    """List components."""
    rows = collect(args.kind, args.details)
    if args.json:
        from pretrain.cli._console import print_json

        print_json(rows)
        return 0
    from rich.table import Table

    from pretrain.cli._console import console

    table = Table(title="Installed components", title_justify="left")
    for col in ("kind", "name", "distribution", "version"):
        table.add_column(col)
    if args.details:
        table.add_column("status")
        table.add_column("summary", overflow="fold")
    for row in rows:
        name = row["name"] + (" [yellow](ambiguous: use dist:name)[/]" if row["ambiguous"] else "")
        cells = [row["kind"], name, row["distribution"], row["version"]]
        if args.details:
            status = "[green]ok[/]" if row["status"] == "ok" else f"[red]broken[/]: {row['error']}"
            cells += [status, row.get("summary", "")]
        elif row["status"] == "broken":
            cells[1] += f" [red](broken: {row['error']})[/]"
        table.add_row(*cells)
    console.print(table)
    broken = [r for r in rows if r["status"] == "broken"]
    if broken:
        console.print(f"[red]{len(broken)} broken component(s)[/]; see `pretrain plugins` for details.")
    return 0
