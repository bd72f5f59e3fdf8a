"""``jnreg agents``: list and show the agents that plugins provide, and write a new plugin."""

from __future__ import annotations

from typing import Any

import click

from jnreg.cli.base import echo_json
from jnreg.cli.scaffold import agents_new


@click.group()
def agents() -> None:
    """The agents that plugins provide."""


def _agent_summary(agent) -> dict[str, Any]:
    spec = agent.spec
    return {
        "name": spec.name,
        "description": spec.description,
        "plugin": agent.plugin,
        "package": agent.package,
        "base_model": spec.defaults.base_model,
        "adapter_name": spec.default_adapter_name,
    }


@agents.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def agents_list(as_json: bool) -> None:
    """List every agent with its plugin."""
    from jnreg.core.host.plugins import get_host

    host = get_host()
    rows = [_agent_summary(agent) for agent in host.agents().values()]
    if as_json:
        echo_json({"agents": rows, "problems": host.problems})
        return
    width = max((len(r["name"]) for r in rows), default=5)
    for row in rows:
        click.echo(f"{row['name']:<{width}}  {row['description']}  [{row['package'] or row['plugin']}]")
    for problem in host.problems:
        click.echo(f"warning: {problem}", err=True)


@agents.command("show")
@click.argument("agent")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def agents_show(agent: str, as_json: bool) -> None:
    """Show an agent's defaults, template, sample data and origin."""
    from dataclasses import asdict

    from jnreg.core.data.rows import count_sample_rows
    from jnreg.core.host.plugins import get_host

    found = get_host().get(agent)
    spec = found.spec
    info = _agent_summary(found) | {
        "defaults": asdict(spec.defaults),
        "template": {"system": spec.template.system, "user": spec.template.user},
        "serving": asdict(spec.serving),
        "sample_rows": count_sample_rows(spec),
        "sample_data": str(spec.sample_data) if spec.sample_data else None,
        "response_schema": spec.response_schema is not None,
        "requirements": list(spec.requirements),
    }
    if as_json:
        info["response_schema"] = spec.response_schema
        echo_json(info)
        return
    click.echo(f"{spec.name}: {spec.description}")
    click.echo(f"  plugin:       {found.plugin} (package {found.package or 'not installed'})")
    click.echo(f"  adapter name: {spec.default_adapter_name}")
    click.echo(f"  sample rows:  {info['sample_rows']}")
    click.echo(f"  serving:      max_new_tokens={spec.serving.max_new_tokens} temperature={spec.serving.temperature}")
    click.echo(f"  response schema: {'yes' if spec.response_schema else 'no'}")
    click.echo(f"  promotion requirements: {', '.join(spec.requirements) or 'none'}")
    click.echo("  defaults:")
    for key, value in info["defaults"].items():
        click.echo(f"    {key} = {value if not isinstance(value, (list, tuple)) else ','.join(value)}")
    click.echo("  system prompt:")
    click.echo("    " + spec.template.system)
    click.echo(f"  user message: {spec.template.user}")


agents.add_command(agents_new)
