"""Render a plan (and what executing it did) as a table or as JSON. The dry run and the real run
render the same plan the same way; the real run adds each deletion's outcome."""
from __future__ import annotations

import io
from typing import Any

from registry.cleanup.execute import Outcome
from registry.cleanup.plan import Plan, PlanItem


def _key(item: PlanItem) -> tuple[str, str]:
    return (item.repository, item.tag)


def to_json(plan: Plan, outcomes: list[Outcome] | None, dry_run: bool) -> dict[str, Any]:
    doc = plan.to_dict()
    doc["dryRun"] = dry_run
    if outcomes is not None:
        by = {_key(o.item): o for o in outcomes}
        for item in doc["items"]:
            o = by.get((item["repository"], item["tag"]))
            if o is not None:
                item["status"], item["detail"] = o.status, o.detail
        doc["result"] = result_counts(outcomes)
    return doc


def result_counts(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {"deleted": 0, "skipped": 0, "failed": 0}
    for o in outcomes:
        counts[o.status] += 1
    return counts


def summary_line(plan: Plan, outcomes: list[Outcome] | None, dry_run: bool) -> str:
    s = plan.summary()
    parts = [f"keep {s['keep']}", f"delete {s['delete']}"]
    kinds = ", ".join(f"{k.split('_', 1)[1]}s {v}" for k, v in s.items() if k.startswith("delete_"))
    line = f"plan: {parts[0]}, {parts[1]}" + (f" ({kinds})" if kinds else "")
    if dry_run:
        return line + "; dry run: nothing was deleted"
    if outcomes is not None:
        c = result_counts(outcomes)
        line += f"; deleted {c['deleted']}, skipped {c['skipped']}, failed {c['failed']}"
    return line


def render_text(plan: Plan, outcomes: list[Outcome] | None, dry_run: bool, width: int = 160) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    by = {_key(o.item): o for o in outcomes or []}
    table = Table(show_lines=False, expand=False, pad_edge=False)
    for col in ("action", "kind", "repository:tag", "digest", "why"):
        table.add_column(col, overflow="fold")
    if outcomes is not None:
        table.add_column("result", overflow="fold")
    for item in sorted(plan.items, key=lambda i: (i.action != "keep", i.repository, i.tag)):
        action = item.action if item.method is None else f"{item.action} ({item.method})"
        row = [action, item.kind, f"{item.repository}{'@' if item.untagged else ':'}{item.tag}", item.digest[7:19] if item.digest else "-",
               "; ".join(item.reasons)]
        if outcomes is not None:
            o = by.get(_key(item))
            row.append("" if o is None else f"{o.status}: {o.detail}" if o.status != "deleted" else o.status)
        table.add_row(*(Text(cell) for cell in row))  # plain text: no rich markup from names or regexes
    buf = io.StringIO()
    console = Console(file=buf, width=width, highlight=False, color_system=None, soft_wrap=False)
    console.print(table)
    for blocker in plan.blockers:
        console.print(Text(f"nothing is deleted: {blocker}"))
    for note in plan.notes:
        console.print(Text(f"ignored: {note}"))
    console.print(summary_line(plan, outcomes, dry_run))
    return buf.getvalue().rstrip("\n")
