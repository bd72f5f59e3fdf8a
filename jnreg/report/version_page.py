"""A version's page: curves, data, config, lineage, evaluations and history, from the store's documents."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Any

from jnreg.report.collect import Evaluation, VersionDocuments, gather
from jnreg.report.html import bar_chart, cell, code, fmt, line_chart, page, pairs, table, value

CURVES = (
    ("loss", "Training loss", ("loss", "eval_loss")),
    ("learning_rate", "Learning rate", ("learning_rate",)),
    ("tokens_per_second", "Tokens per second", ("tokens_per_second",)),
)
STEP_COLUMNS = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "input_tokens")
DATA_COUNTS = (
    ("rows", "training rows"),
    ("eval_rows", "evaluation rows"),
    ("rows_skipped", "rows skipped (bad rows)"),
    ("rows_truncated", "rows truncated (over max_seq_length)"),
    ("rows_dropped_too_long", "rows dropped (over max_seq_length)"),
    ("prompt_tokens", "prompt tokens"),
    ("response_tokens", "response tokens"),
    ("supervised_tokens", "trained tokens"),
)
SUMMARY_METRICS = (
    "train_loss",
    "eval_loss_before",
    "eval_loss",
    "steps",
    "runtime_s",
    "tokens_per_second",
    "input_tokens",
    "peak_memory_bytes",
)


def _curves(docs: VersionDocuments) -> tuple[str, dict[str, Any]]:
    if docs.log is None or not docs.log["steps"]:
        return "<p class=muted>No per-step log was published with this version.</p>", {}
    steps = docs.log["steps"]
    charts, data = [], {}
    for name, title, fields in CURVES:
        series = []
        for field in fields:
            kept = [entry for entry in steps if field in entry]
            if kept:
                series.append((field, [e["step"] for e in kept], [e[field] for e in kept]))
        html, chart = line_chart(name, title, series)
        if html:
            charts.append(html)
            data[name] = chart
    # Ten thousand steps make a long table: plain cells in the log's order keep the page small, and the
    # exact values are in the chart data.
    rows = [
        "".join(
            f"<td>{fmt(entry[column])}</td>" if column in entry else "<td></td>" for column in ("step", *STEP_COLUMNS)
        )
        for entry in steps
    ]
    listing = table(("step", *STEP_COLUMNS), rows, ident="steps")
    html = (
        f'<div class="charts">{"".join(charts)}</div>'
        f"<details><summary>Every logging step ({len(steps)} entries, every "
        f"{docs.log['logging_steps']} steps)</summary>{listing}</details>"
    )
    return html, data


def _training(docs: VersionDocuments) -> str:
    summary = docs.summary
    if summary is None:
        return "<p class=muted>This version was published without a training summary.</p>"
    metrics = summary["metrics"]
    rows = [(name, value(f"summary/metrics/{name}", metrics[name])) for name in SUMMARY_METRICS if name in metrics]
    rows += [
        ("device", cell(summary["device"])),
        ("processes", cell(summary.get("processes", 1))),
        ("global batch size", cell(summary.get("global_batch_size"))),
        ("started", cell(summary["started_at"])),
        ("finished", cell(summary["finished_at"])),
    ]
    return pairs(rows)


def _data(docs: VersionDocuments) -> str:
    summary = docs.summary
    if summary is None:
        return "<p class=muted>No data report: this version was published without a training summary.</p>"
    dataset = summary["dataset"]
    rows = [(label, value(f"summary/dataset/{key}", dataset[key])) for key, label in DATA_COUNTS if key in dataset]
    html = pairs([("source", cell(dataset["source"])), *rows])
    histogram = dataset.get("length_histogram")
    if histogram:
        html += bar_chart("Row lengths (tokens, training rows)", histogram["edges"], histogram["counts"])
    if dataset.get("skipped"):
        reasons = "".join(f"<li><code>{escape(line)}</code></li>" for line in dataset["skipped"])
        html += f"<h3>Rows skipped and why</h3><ul>{reasons}</ul>"
    return html


def _config(docs: VersionDocuments) -> str:
    if docs.config is not None:
        items = {k: v for k, v in docs.config.items() if k != "schema_version"}
        note = "<p class=muted>As saved in jnreg_config.json; <code>jnreg train --config</code> reruns it.</p>"
    elif docs.summary is not None:
        items = docs.summary["hyperparameters"]
        note = "<p class=muted>This version was published without its config file: the summary's hyperparameters.</p>"
    else:
        return "<p class=muted>No config was published with this version.</p>"
    rows = [(key, code(",".join(map(str, v)) if isinstance(v, list) else fmt(v))) for key, v in sorted(items.items())]
    return note + pairs(rows)


def _lineage(docs: VersionDocuments) -> str:
    manifest, summary = docs.manifest, docs.summary or {}
    rows = [
        ("base model", code(manifest["base_model"])),
        ("base model revision", code(manifest.get("base_model_revision") or "not recorded")),
        ("adapter", code(f"{manifest['adapter_name']} ({manifest['peft_type']}, r={manifest['r']})")),
        (
            "digest",
            f'<td><code data-key="manifest/digest" data-value="&quot;{manifest["digest"]}&quot;">'
            f"{escape(manifest['digest'])}</code></td>",
        ),
        ("signer", cell(manifest.get("signer") or "not signed")),
        ("published", cell(f"{manifest['created_at']} by {manifest['created_by']}")),
        ("jnreg", code(manifest["jnreg_version"])),
    ]
    dataset = summary.get("dataset") or {}
    if dataset:
        rows.append(("data", code(f"{dataset['source']} (rows sha256 {dataset['sha256']})")))
    html = pairs(rows)
    files = dataset.get("files") or []
    if files:
        html += "<h3>Data files</h3>" + table(
            ("role", "file", "sha256"), (cell(f["role"]) + code(f["path"]) + code(f["sha256"]) for f in files)
        )
    versions = summary.get("library_versions") or {}
    if versions:
        html += "<h3>Libraries</h3>" + table(
            ("library", "version"), (cell(k) + code(v) for k, v in sorted(versions.items()))
        )
    html += "<h3>Files</h3>" + table(
        ("file", "bytes", "sha256"),
        (code(f["path"]) + f'<td class="n">{f["size"]:,}</td>' + code(f["sha256"]) for f in manifest["files"]),
    )
    return html


def _metric_names(documents: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for document in documents:
        names += [name for name in document["metrics"] if name not in names]
    first = ("rows", "eval_loss", "json_rate", "schema_valid", "exact_match")
    return [n for n in first if n in names] + sorted(n for n in names if n not in first)


def _evaluation(docs: VersionDocuments, evaluation: Evaluation) -> str:
    document = evaluation.document
    ident = document["id"]
    source, settings = document["rows_source"], document["settings"]
    names = _metric_names([document, *evaluation.compared])
    header = ("metric", docs.version, *(f"{o['version']} ({o['id']})" for o in evaluation.compared))
    rows = []
    for name in names:
        cells = cell(name) + value(f"evaluations/{ident}/metrics/{name}", document["metrics"].get(name))
        cells += "".join(
            value(f"evaluations/{o['id']}/metrics/{name}", o["metrics"].get(name)) for o in evaluation.compared
        )
        rows.append(cells)
    html = (
        f'<h3 id="{ident}">Evaluation {escape(ident)}</h3>'
        f"<p>{escape(document['created_at'])} by {escape(document['created_by'])}: "
        f"{fmt(document['metrics']['rows'])} of {fmt(source['rows'])} rows ({escape(source['kind'])}: "
        f"{escape(', '.join(source['files']))}); quantization {escape(settings['quantization'])}, "
        f"temperature {fmt(settings['temperature'])}, max_new_tokens {fmt(settings['max_new_tokens'])}</p>"
    )
    if evaluation.compared:
        html += "<p class=muted>Beside it: the other versions' evaluations of the same rows (--against).</p>"
    html += table(header, rows)
    if not evaluation.failed:
        return html + "<p>No row failed.</p>"
    failed_rows = []
    for row in evaluation.failed:
        path, colon, message = (row["schema_error"] or "").partition(": ")
        if not colon:  # "not JSON": no path in the answer failed, the whole answer did
            path, message = "", row["schema_error"] or ""
        missed = ", ".join(k for k, ok in sorted(row["exact_match"].items()) if not ok)
        why = "not JSON" if row["json"] is False else ("schema" if row["schema_valid"] is False else "exact match")
        failed_rows.append(
            f'<td class="n" data-key="evaluations/{ident}/failed" data-value="{row["index"]}">{row["index"]}</td>'
            + code(row["where"])
            + cell(why)
            + code(path)
            + cell(message or (f"differs: {missed}" if missed else ""))
            + cell(row["answer"] if row["answer"] is not None else "(no answer)", pre=True)
        )
    return html + (
        f"<details open><summary>{len(evaluation.failed)} failed row(s)</summary>"
        + table(("row", "where", "failed", "schema path", "error", "answer"), failed_rows)
        + "</details>"
    )


def _history(docs: VersionDocuments) -> str:
    if not docs.history:
        return "<p class=muted>The journal has no entry about this version.</p>"

    def what(entry: dict[str, Any]) -> str:
        if entry["current"] == docs.version and entry["previous"] != docs.version:
            return f"{entry['action']}: put in service" + (f" (was {entry['previous']})" if entry["previous"] else "")
        if entry["previous"] == docs.version and entry["current"] != docs.version:
            return f"{entry['action']} of {entry['version']}: taken out of service for {entry['current'] or 'none'}"
        return entry["action"] + (" (not put in service)" if entry["action"] == "publish" else "")

    return table(("when", "what", "by"), (cell(e["when"]) + cell(what(e)) + cell(e["who"]) for e in docs.history))


def render_version(docs: VersionDocuments, *, generated_at: str, overview: str | None = None) -> bytes:
    """The page of one version, from its documents."""
    curves, charts = _curves(docs)
    evaluations = "".join(_evaluation(docs, e) for e in docs.evaluations) or "<p class=muted>Not evaluated yet.</p>"
    state = '<span class="badge">in service</span>' if docs.in_service else '<span class="muted">not in service</span>'
    back = f' · <a href="{escape(overview)}">the store</a>' if overview else ""
    sections = (
        ("training", "Training", curves + _training(docs)),
        ("data", "Data", _data(docs)),
        ("config", "Config", _config(docs)),
        ("lineage", "Lineage", _lineage(docs)),
        ("evaluations", "Evaluations", evaluations),
        ("history", "History", _history(docs)),
    )
    body = (
        f"<header><h1>{escape(docs.agent)} {escape(docs.version)} {state}</h1>"
        f'<p class="muted">digest <code>{escape(docs.manifest["digest"][:16])}</code> · page made {generated_at} '
        f"by jnreg{back}</p><nav>"
        + "".join(f'<a href="#{ident}">{title}</a>' for ident, title, _ in sections)
        + "</nav></header><main>"
        + "".join(f'<section id="{ident}"><h2>{title}</h2>{html}</section>' for ident, title, html in sections)
        + "</main>"
    )
    return page(f"{docs.agent} {docs.version} · jnreg", body, charts)


def write_version_page(store: Any, agent: str, version: str) -> str:
    """Make the version's page and keep it beside the version in the store; where it is."""
    page_bytes = render_version(gather(store, agent, version), generated_at=made_at())
    return store.write_report(agent, version, page_bytes)


def made_at() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
