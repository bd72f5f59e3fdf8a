"""``jnreg generate``: try a stored adapter the way serving would use it."""

from __future__ import annotations

import sys

import click

from jnreg.cli.base import TEMPERATURE, echo_json, open_store


@click.command()
@click.argument("agent")
@click.argument("prompt")
@click.option("--version", help="Adapter version [the one in service].")
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="[the agent's serving setting]")
@click.option("--temperature", type=TEMPERATURE, help="[the agent's serving setting; 0 is greedy]")
@click.option("--quantization", type=click.Choice(["nf4", "8bit", "none"]), default="nf4", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def generate(
    ctx: click.Context,
    agent: str,
    prompt: str,
    version: str | None,
    max_new_tokens: int | None,
    temperature: float | None,
    quantization: str,
    as_json: bool,
) -> None:
    """Answer PROMPT with AGENT's stored adapter, prompted the way the version was trained."""
    from jnreg.core.evaluation.generation import generate_answer
    from jnreg.core.host.plugins import get_host
    from jnreg.core.models.loading import quiet_library_warnings
    from jnreg.registry import load
    from jnreg.release import spec_as_trained

    if prompt == "-":
        prompt = sys.stdin.read()
    quiet_library_warnings()
    store = open_store(ctx)
    resolution = store.resolve(agent, version)
    spec, prompt_template = spec_as_trained(get_host().get(agent).spec, resolution.manifest)
    model, tokenizer = load(agent, resolution.version, None if quantization == "none" else quantization, store=store)
    answer = generate_answer(
        model,
        tokenizer,
        spec,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        prompt_template=prompt_template,
    )
    result = {"agent": agent, "version": resolution.version} | answer
    if as_json:
        echo_json(result)
    else:
        click.echo(result["text"])
