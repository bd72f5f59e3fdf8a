"""``jnreg report`` and ``jnreg store report``: a version's page, and the store's overview with every page it links."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jnreg.cli.base import echo_json, open_store
from jnreg.errors import JnregError, first_line

if TYPE_CHECKING:
    from collections.abc import Callable

    from jnreg.registry.store import ModelStore


def release_hooks(store: ModelStore, agent: str, echo: Callable[[str], None]) -> dict[str, Any]:
    """What each step of the release workflow the CLI runs takes: where its lines go, whether it shows
    progress, and the page refresh after each change."""
    import sys

    return {
        "echo": echo,
        "progress": sys.stderr.isatty(),
        "on_change": lambda changed: refresh_page(store, agent, changed, echo),
    }


def refresh_page(store: ModelStore, agent: str, version: str, echo: Callable[[str], None]) -> str | None:
    """Rewrite the version's page beside it after a change; a page that cannot be made never undoes the change.

    Silent when it works, so the commands' own output (and their --json) stays as it was.
    """
    from jnreg.report import write_version_page

    try:
        where = write_version_page(store, agent, version)
    except (JnregError, OSError) as exc:
        echo(f"note: the page of {agent} {version} was not written: {first_line(exc)}")
        return None
    return where


@click.command("report")
@click.argument("agent")
@click.argument("version", required=False)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the page to FILE [only beside the version in the store].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def report(ctx: click.Context, agent: str, version: str | None, out: Path | None, as_json: bool) -> None:
    """Write the page of AGENT's VERSION [the one in service]: curves, data, lineage, evaluations, history."""
    from jnreg.fsutil import atomic_write
    from jnreg.report import render_version
    from jnreg.report.collect import gather
    from jnreg.report.version_page import made_at

    model_store = open_store(ctx)
    version = model_store.resolve(agent, version).version if version is None else version
    page = render_version(gather(model_store, agent, version), generated_at=made_at())
    where = model_store.write_report(agent, version, page)
    if out is not None:
        try:
            atomic_write(out, page)
        except OSError as exc:
            raise click.ClickException(f"cannot write {out}: {exc.strerror or exc}") from None
    if as_json:
        echo_json({"agent": agent, "version": version, "report": where, "out": str(out) if out else None})
        return
    click.echo(f"report of {agent} {version}: {where}" + (f" and {out}" if out else ""))


@click.command("report")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Directory for index.html and the version pages it links to.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def store_report(ctx: click.Context, out: Path, as_json: bool) -> None:
    """Write an overview of the store into DIR: every agent, what is in service since when, a timeline."""
    from jnreg.report import write_overview

    try:
        written = write_overview(open_store(ctx), out)
    except OSError as exc:
        raise click.ClickException(f"cannot write into {out}: {exc.strerror or exc}") from None
    if as_json:
        echo_json({"index": str(written[0]), "pages": [str(p) for p in written[1:]]})
        return
    click.echo(f"overview: {written[0]} ({len(written) - 1} version page(s) beside it)")
