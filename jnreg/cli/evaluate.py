"""``jnreg eval``: evaluate a stored version as serving answers, record the result beside it, compare two."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from jnreg.cli.base import TEMPERATURE, MultiValueCommand, echo_json, open_store
from jnreg.cli.report import refresh_page
from jnreg.names import EVAL_ROWS_FILE

if TYPE_CHECKING:
    from jnreg.core.host.spec import AgentSpec

SHOWN = ("rows", "eval_loss", "json_rate", "schema_valid", "exact_match")


def _spec(agent: str) -> AgentSpec:
    from jnreg.core.host.plugins import get_host

    return get_host().get(agent).spec


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metric_names(*documents: dict[str, Any]) -> list[str]:
    names = list(SHOWN)
    for document in documents:
        names += [n for n in sorted(document["metrics"]) if n.startswith("exact_match.") and n not in names]
    return [*names, "tokens_per_second"]


def _verdicts(side: dict[str, Any]) -> str:
    def mark(value: Any) -> str:
        return "-" if value is None else ("yes" if value else "no")

    exact = " ".join(f"{k}={mark(v)}" for k, v in sorted(side["exact_match"].items()))
    return f"json={mark(side['json'])} schema={mark(side['schema_valid'])}" + (f" {exact}" if exact else "")


def _short(text: str | None, width: int = 120) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


@click.command("eval", cls=MultiValueCommand)
@click.argument("agent")
@click.option("--version", help="Version to evaluate [the one in service].")
@click.option("--against", help="Also evaluate this version ('current' or a label) on the same rows, side by side.")
@click.option("--eval-files", multiple=True, help="JSON/JSONL eval rows [the held-out rows recorded with the version].")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N rows.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="[the agent's serving setting]")
@click.option("--temperature", type=TEMPERATURE, help="[the agent's serving setting; 0 is greedy]")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for sampling when the temperature is above 0."
)
@click.option("--quantization", type=click.Choice(["nf4", "8bit", "none"]), default="nf4", show_default=True)
@click.option(
    "--engine",
    type=click.Choice(["transformers", "vllm"]),
    default="transformers",
    show_default=True,
    help="Answer through transformers + peft, or through vLLM as `jnreg serve` does (unquantized base).",
)
@click.option("--server", metavar="URL", help="With --engine vllm: ask this running `jnreg serve` of the same store.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def eval_(
    ctx: click.Context,
    agent: str,
    version: str | None,
    against: str | None,
    eval_files: tuple[str, ...],
    limit: int | None,
    max_new_tokens: int | None,
    temperature: float | None,
    seed: int,
    quantization: str,
    engine: str,
    server: str | None,
    as_json: bool,
) -> None:
    """Evaluate AGENT's stored adapter on eval rows as serving would answer them, and record the result."""
    from jnreg.core.evaluation.evaluate import differing_rows
    from jnreg.errors import ConfigError
    from jnreg.release import evaluate_version

    if server and engine != "vllm":
        raise ConfigError("--server is where vLLM answers; it needs --engine vllm")
    store = open_store(ctx)
    _spec(agent)  # an unknown agent fails before anything is loaded
    first = store.resolve(agent, version).version
    second = None
    if against is not None:
        second = store.resolve(agent, None if against == "current" else against).version
    options = {
        "limit": limit,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "quantization": quantization,
        "progress": not as_json or sys.stderr.isatty(),
        "on_change": lambda changed: refresh_page(store, agent, changed, lambda line: click.echo(line, err=True)),
        "engine": engine,
        "server": server,
    }
    doc_a, rows_a = evaluate_version(store, agent, first, eval_files=eval_files, **options)
    if second is None:
        rows_path = store.evaluation_location(agent, first, doc_a["rows_file"])
        if as_json:
            echo_json({"agent": agent, "version": first, "evaluation": doc_a, "rows_path": rows_path})
            return
        source = doc_a["rows_source"]
        click.echo(f"{agent} {first}: {doc_a['metrics']['rows']} row(s) from {', '.join(source['files'])}")
        for name in _metric_names(doc_a):
            click.echo(f"  {name:<28} {_fmt(doc_a['metrics'].get(name))}")
        click.echo(f"rows: {rows_path}")
        click.echo(f"recorded as evaluation {doc_a['id']} of {agent} {first}")
        click.echo(f"page: {store.report_location(agent, first)}")
        click.echo(f"page: {store.report_location(agent, first)}")
        return
    # The second version answers exactly the rows the first one did.
    same_rows = eval_files or (str(store.resolve(agent, first).adapter_path / EVAL_ROWS_FILE),)
    doc_b, rows_b = evaluate_version(store, agent, second, eval_files=same_rows, **options)
    differ = differing_rows(rows_a, rows_b)
    if as_json:
        echo_json({"agent": agent, "a": doc_a, "b": doc_b, "differing_rows": differ})
        return
    click.echo(f"{'metric':<28} {first:>16} {second:>16}")
    for name in _metric_names(doc_a, doc_b):
        a, b = doc_a["metrics"].get(name), doc_b["metrics"].get(name)
        click.echo(f"{name:<28} {_fmt(a):>16} {_fmt(b):>16}")
    click.echo(f"{len(differ)} of {len(rows_a)} row(s) differ")
    for row in differ:
        click.echo(f"  #{row['index']} {row['where']}: {_short(row['prompt'], 80)}")
        click.echo(f"    {first}: {_verdicts(row['a'])}  {_short(row['a']['answer'])}")
        click.echo(f"    {second}: {_verdicts(row['b'])}  {_short(row['b']['answer'])}")
