"""The store at a glance: every agent, the version in service and since when, its latest metrics, a timeline."""

from __future__ import annotations

from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from jnreg.fsutil import atomic_write
from jnreg.report.collect import agent_records, gather
from jnreg.report.html import cell, page, table, value
from jnreg.report.version_page import made_at, render_version

INDEX = "index.html"
SHOWN = ("rows", "eval_loss", "json_rate", "schema_valid", "exact_match")
MARKS = {"publish": "#1f6fd1", "promote": "#2a9d4b", "rollback": "#d1541f"}


def _when(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["when"].replace("Z", "+00:00"))


def _since(entries: list[dict[str, Any]], current: str | None) -> str | None:
    """When the version in service was last put there."""
    moves = [e for e in entries if e["action"] in ("publish", "promote", "rollback") and e["current"] == current]
    changed = [e for e in moves if e["previous"] != e["current"]]
    return (changed or moves)[-1]["when"] if current and (changed or moves) else None


def page_name(agent: str, version: str) -> str:
    return f"{agent}/{version}.html"


def _timeline(agent: str, entries: list[dict[str, Any]], pages: set[str]) -> str:
    """An SVG time axis with a mark per publish, promotion and rollback, each linking to its version's page."""
    moves = [e for e in entries if e["action"] in MARKS]
    if not moves:
        return ""
    width, height, left, right = 900, 54, 10, 10
    start, end = _when(moves[0]), _when(moves[-1])
    span = (end - start).total_seconds() or 1.0
    parts = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="24" y2="24" stroke="#d8dee4" stroke-width="2"/>')
    for entry in moves:
        x = left + (_when(entry) - start).total_seconds() / span * (width - left - right)
        y = {"publish": 14, "promote": 24, "rollback": 34}[entry["action"]]
        mark = (
            f'<circle cx="{x:.1f}" cy="{y}" r="5" fill="{MARKS[entry["action"]]}">'
            f"<title>{escape(entry['when'])} {entry['action']} {escape(entry['version'])} by {escape(entry['who'])}"
            "</title></circle>"
        )
        target = entry["current"] if entry["action"] == "rollback" else entry["version"]
        name = page_name(agent, target) if target else None
        parts.append(f'<a href="{escape(name)}">{mark}</a>' if name in pages else mark)
    parts.append(f'<text x="{left}" y="{height - 2}">{escape(moves[0]["when"][:16])}</text>')
    parts.append(
        f'<text x="{width - right}" y="{height - 2}" text-anchor="end">{escape(moves[-1]["when"][:16])}</text>'
    )
    parts.append("</svg>")
    legend = " ".join(f'<span style="color:{c}">●</span> {a}' for a, c in MARKS.items())
    return f'<figure><figcaption class="muted">{legend}</figcaption>{"".join(parts)}</figure>'


def _link(agent: str, version: str | None, pages: set[str]) -> str:
    if not version:
        return "<td>–</td>"
    name = page_name(agent, version)
    if name not in pages:
        return f"<td>{escape(version)} <span class=muted>(removed)</span></td>"
    return f'<td><a href="{escape(name)}">{escape(version)}</a></td>'


def write_overview(store: Any, out_dir: Path) -> list[Path]:
    """Write the overview (index.html) and the page of every version it links to into ``out_dir``; the files."""
    out_dir = Path(out_dir)
    made = made_at()
    written: list[Path] = []
    pages: set[str] = set()
    agents = []
    for agent in store.agents():
        labels = store.version_labels(agent)
        if not labels:
            continue
        records = agent_records(store, agent)
        for label in labels:
            docs = gather(store, agent, label, records=records)
            target = out_dir / page_name(agent, label)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, render_version(docs, generated_at=made, overview=f"../{INDEX}"))
            written.append(target)
            pages.add(page_name(agent, label))
        agents.append((agent, records.current, records.history, records.evaluations))

    rows, timelines = [], []
    for agent, current, entries, evaluations in agents:
        latest = (evaluations.get(current) or [None])[-1] if current else None
        metrics = "".join(
            value(f"overview/{agent}/{name}", latest["metrics"].get(name)) if latest else "<td></td>" for name in SHOWN
        )
        rows.append(cell(agent) + _link(agent, current, pages) + cell(_since(entries, current) or "–") + metrics)
        history = table(
            ("when", "action", "version", "in service", "by"),
            (
                cell(e["when"])
                + cell(e["action"])
                + _link(agent, e["version"], pages)
                + cell(f"{e['previous'] or '–'} → {e['current'] or '–'}")
                + cell(e["who"])
                for e in entries
            ),
        )
        timelines.append(
            f'<h3 id="{agent}">{escape(agent)}</h3>{_timeline(agent, entries, pages)}'
            f"<details><summary>{len(entries)} journal entries</summary>{history}</details>"
        )
    summary = table(("agent", "in service", "since", *(f"latest eval: {n}" for n in SHOWN)), rows, ident="agents")
    body = (
        f"<header><h1>jnreg store</h1><p class=muted><code>{escape(str(store.root))}</code> · page made {made}</p>"
        "</header><main><section><h2>Agents</h2>"
        + (summary if rows else "<p class=muted>The store holds no versions.</p>")
        + "</section><section><h2>Timeline</h2>"
        + "".join(timelines)
        + "</section></main>"
    )
    index = out_dir / INDEX
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(index, page("jnreg store", body))
    return [index, *written]
