"""``jnreg store``: publish, list, show, resolve, promote, roll back, verify and gc adapters in the ModelStore."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jnreg.cli.base import StoreRoot, echo_json, open_store, progress_echo, settings, trusting
from jnreg.cli.report import refresh_page, release_hooks, store_report
from jnreg.errors import ConfigError, IntegrityError, StoreError, StoreNotFound

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from jnreg.registry.store import ModelStore


def _sign_key_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--sign-key",
        type=click.Path(path_type=Path, dir_okay=False),
        help="PEM EC private key to sign the version with [env JNREG_SIGNING_KEY].",
    )(function)


def _signature_text(model_store: ModelStore, agent: str, version: str) -> str:
    """How ``store show`` describes a version's signature (under a trust policy, show refuses any other)."""
    from jnreg.registry.signing import short

    signer = model_store.signer(agent, version)
    if signer is None:
        return "unsigned"
    trusted = "trusted" if model_store.trust is not None else "no trust policy on this host"
    return f"signed by key {short(signer)} ({trusted})"


def _version_row(manifest: dict[str, Any], current: str | None) -> dict[str, Any]:
    return {
        "version": manifest["version"],
        "adapter_name": manifest["adapter_name"],
        "base_model": manifest["base_model"],
        "created_at": manifest["created_at"],
        "digest": manifest["digest"],
        "current": manifest["version"] == current,
    }


def _latest_evaluation(model_store: ModelStore, agent: str, version: str) -> dict[str, Any] | None:
    """The latest evaluation of a version, as ``store list --json`` carries it."""
    found = model_store.evaluations(agent, version)
    if not found:
        return None
    latest = found[-1]
    return {"id": latest["id"], "created_at": latest["created_at"], "metrics": latest["metrics"]}


def _metrics_line(document: dict[str, Any]) -> str:
    parts = []
    for name, value in document["metrics"].items():
        if value is not None:
            parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def _require_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--require",
        "require",
        multiple=True,
        metavar="METRIC>=X",
        help="Put in service only if the evaluation meets this (several allowed) [the agent plugin's default].",
    )(function)


class StoreGroup(click.Group):
    """Reports a failed file operation (disk full, permission denied) as one line, like any store error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise StoreError(f"store operation failed: {exc.strerror or exc}{where}") from None


@click.group(cls=StoreGroup)
def store() -> None:
    """The ModelStore: published adapters, the version each agent serves, and AGENT_MODEL_MAP.json."""


store.add_command(store_report)


@store.command("publish")
@click.argument("agent")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--adapter-version", "version", help="Version label [vYYYYMMDD-HHMM, UTC; -2, -3... when taken].")
@click.option("--adapter-name", help="Adapter name [training_summary's, else <agent>_adapter].")
@click.option("--no-promote", is_flag=True, help="Store the version without putting it in service.")
@click.option("--base-model", help="The base model it was trained on, for an adapter that does not name one.")
@_require_option
@_sign_key_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def publish(
    ctx: click.Context,
    agent: str,
    directory: Path,
    version: str | None,
    adapter_name: str | None,
    no_promote: bool,
    base_model: str | None,
    require: tuple[str, ...],
    sign_key: Path | None,
    as_json: bool,
) -> None:
    """Store the adapter in DIRECTORY as a new version of AGENT and (unless --no-promote) put it in service."""
    from jnreg import release

    if require and no_promote:
        raise ConfigError("--require gates putting the version in service; it has no use with --no-promote")
    model_store = open_store(ctx)
    echo = progress_echo(as_json)
    result = release.publish(
        model_store,
        agent,
        directory,
        require=require,
        **release_hooks(model_store, agent, echo),
        adapter_name=adapter_name,
        version=version,
        promote=not no_promote,
        base_model=base_model,
        sign_key=sign_key,
    )
    if as_json:
        echo_json(
            {
                "agent": agent,
                "version": result.version,
                "path": str(result.path),
                "digest": result.digest,
                "promoted": result.promoted,
                "signer": result.signer,
            }
        )
        return
    state = "in service" if result.promoted else "not promoted"
    signed = f", signed by key sha256:{result.signer[:16]}" if result.signer else ""
    click.echo(f"published {agent} {result.version} ({result.digest[:12]}, {state}{signed}) at {result.path}")
    click.echo(f"page: {model_store.report_location(agent, result.version)}")


@store.command("sign")
@click.argument("agent")
@click.argument("version")
@_sign_key_option
@click.option("--replace", is_flag=True, help="Sign anew a version that is already signed (for a new key).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def sign(ctx: click.Context, agent: str, version: str, sign_key: Path | None, replace: bool, as_json: bool) -> None:
    """Sign AGENT's published VERSION (its files and digest stay as they are; model.sig is added beside them)."""
    fingerprint = open_store(ctx).sign(agent, version, sign_key, replace=replace)
    if as_json:
        echo_json({"agent": agent, "version": version, "signer": fingerprint})
    else:
        click.echo(f"signed {agent} {version} with key sha256:{fingerprint[:16]}")


@store.command("list")
@click.argument("agent", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_(ctx: click.Context, agent: str | None, as_json: bool) -> None:
    """List agents in the store, or AGENT's versions (oldest first; * marks the one in service).

    A damaged `current` does not stop the listing: the versions are shown, with the problem, so that one can
    be promoted (`jnreg store verify` names every problem and exits non-zero).
    """
    model_store = open_store(ctx)
    if agent is None:
        rows = []
        for name in model_store.agents():
            row: dict[str, Any] = {"agent": name, "current": None, "versions": 0, "problem": None}
            row["versions"] = len(model_store.version_labels(name))
            try:
                row["current"] = model_store.current(name)
            except IntegrityError as exc:
                row["problem"] = str(exc)  # one damaged agent must not hide the others
            rows.append(row)
        if as_json:
            echo_json({"root": str(model_store.root), "agents": rows})
            return
        if not rows:
            click.echo(f"no agents in the store at {model_store.root}", err=True)
        for row in rows:
            state = f"problem: {row['problem']}" if row["problem"] else f"current: {row['current'] or '-'}"
            click.echo(f"{row['agent']}  {row['versions']} version(s)  {state}")
        return
    model_store.require_agent(agent)
    problem = None
    try:
        current = model_store.current(agent)
    except IntegrityError as exc:
        current, problem = None, str(exc)
    rows = [_version_row(m, current) for m in model_store.versions(agent)]
    for row in rows:
        row["evaluation"] = _latest_evaluation(model_store, agent, row["version"])
        row["signer"] = model_store.signer(agent, row["version"])
    if as_json:
        echo_json({"agent": agent, "current": current, "problem": problem, "versions": rows})
        return
    if problem:
        click.echo(f"problem: {problem}", err=True)
    for row in rows:
        mark = "*" if row["current"] else " "
        signed = f"  signed by sha256:{row['signer'][:16]}" if row["signer"] else "  unsigned"
        click.echo(
            f"{mark} {row['version']}  {row['adapter_name']}  {row['created_at']}  {row['digest'][:12]}{signed}"
            + (f"  {_metrics_line(row['evaluation'])}" if row["evaluation"] else "")
        )


@store.command("show")
@click.argument("agent")
@click.argument("version", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, agent: str, version: str | None, as_json: bool) -> None:
    """Show the manifest of AGENT's VERSION [default: the one in service]."""
    model_store = open_store(ctx)
    resolution = model_store.resolve(agent, version)
    manifest = resolution.manifest
    evaluations = model_store.evaluations(resolution.agent, resolution.version)
    signer = model_store.signer(resolution.agent, resolution.version)
    if as_json:
        echo_json(
            {
                "path": str(resolution.adapter_path),
                "manifest": manifest,
                "evaluations": evaluations,
                "signer": signer,
                "signature": _signature_text(model_store, resolution.agent, resolution.version),
            }
        )
        return
    click.echo(f"{manifest['agent']} {manifest['version']}  ({manifest['adapter_name']})")
    click.echo(f"  path:        {resolution.adapter_path}")
    click.echo(f"  base model:  {manifest['base_model']} (revision {manifest['base_model_revision'] or '-'})")
    click.echo(f"  adapter:     {manifest['peft_type']} r={manifest['r']} alpha={manifest['alpha']}")
    click.echo(f"  digest:      {manifest['digest']}")
    click.echo(f"  created:     {manifest['created_at']} by {manifest['created_by']}")
    click.echo(f"  summary:     {'yes' if manifest['training_summary'] else 'no'}")
    click.echo(f"  signature:   {_signature_text(model_store, resolution.agent, resolution.version)}")
    for item in manifest["files"]:
        click.echo(f"    {item['sha256'][:12]}  {item['size']:>12}  {item['path']}")
    click.echo(f"  evaluations: {len(evaluations) or 'none'}")
    for document in evaluations:
        source = document["rows_source"]
        click.echo(f"    {document['id']}  {source['kind']} rows ({', '.join(source['files'])})")
        click.echo(f"      {_metrics_line(document)}")


AT_HELP = "A past moment: ISO 8601 (2026-11-25T12:00:00Z; no zone is UTC), or a version, meaning its publish time."


def _moment(entries: list[dict[str, Any]], agent: str, text: str) -> datetime:
    """The time ``--at`` names: a version's publish time, else an ISO 8601 time."""
    from jnreg.registry import journal

    published = journal.published_at(entries, agent, text)
    return journal.parse_time(published or text)


def _in_service_at(model_store: ModelStore, agent: str, text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(the version in service at ``--at``, or None; the journal up to then)."""
    from jnreg.registry import journal

    model_store.require_agent(agent)
    entries = model_store.history(agent)
    moment = _moment(entries, agent, text)
    return journal.in_service_at(entries, agent, moment), journal.until(entries, agent, moment)


@store.command("resolve")
@click.argument("agent")
@click.option("--version", help="Version [default: the one in service].")
@click.option("--at", "at", metavar="TIME", help="The version in service at TIME, from the journal. " + AT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def resolve(ctx: click.Context, agent: str, version: str | None, at: str | None, as_json: bool) -> None:
    """Print AGENT's base model, version, absolute adapter path and digest."""
    model_store = open_store(ctx)
    if at is not None:
        if version is not None:
            raise ConfigError("give --version or --at, not both")
        version, _ = _in_service_at(model_store, agent, at)
        if version is None:
            raise StoreNotFound(f"no version of {agent} was in service at {at}")
        if version not in model_store.version_labels(agent):
            raise StoreNotFound(f"{agent} {version} was in service at {at} but has since been removed (gc)")
    found = model_store.resolve(agent, version)
    row = {
        "agent": found.agent,
        "version": found.version,
        "adapter_name": found.adapter_name,
        "base_model": found.base_model,
        "base_ref": found.base_ref,
        "adapter_path": str(found.adapter_path),
        "digest": found.digest,
    }
    if as_json:
        echo_json(row)
        return
    for key, value in row.items():
        click.echo(f"{key}: {value}")


def _refresh_pages(model_store: ModelStore, agent: str, entry: dict[str, Any], echo: Callable[[str], None]) -> None:
    """The pages of the versions a promote or rollback moved service between, which show it."""
    for version in dict.fromkeys(v for v in (entry["current"], entry["previous"]) if v):
        if model_store.read_report(agent, version) is not None:
            refresh_page(model_store, agent, version, echo)


@store.command("promote")
@click.argument("agent")
@click.argument("version")
@_require_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def promote(ctx: click.Context, agent: str, version: str, require: tuple[str, ...], as_json: bool) -> None:
    """Put AGENT's VERSION in service (checksums are checked first, then any requirements)."""
    from jnreg import release

    model_store = open_store(ctx)
    echo = progress_echo(as_json)
    entry = release.promote(model_store, agent, version, require=require, **release_hooks(model_store, agent, echo))
    if entry is not None:
        _refresh_pages(model_store, agent, entry, echo)
    if as_json:
        echo_json({"agent": agent, "current": version, "previous": entry["previous"] if entry else version})
    elif entry is None:
        click.echo(f"{agent} {version} is already in service")
    else:
        click.echo(f"{agent}: {entry['previous'] or '-'} -> {version}")


@store.command("rollback")
@click.argument("agent")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def rollback(ctx: click.Context, agent: str, as_json: bool) -> None:
    """Put back the version AGENT served before the current one."""
    model_store = open_store(ctx)
    entry = model_store.rollback(agent)
    _refresh_pages(model_store, agent, entry, progress_echo(as_json))
    if as_json:
        echo_json({"agent": agent, "current": entry["version"], "previous": entry["previous"]})
    else:
        click.echo(f"{agent}: {entry['previous']} -> {entry['version']}")


@store.command("verify")
@click.argument("agent", required=False)
@click.argument("version", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def verify(ctx: click.Context, agent: str | None, version: str | None, as_json: bool) -> None:
    """Recompute every checksum; name each bad file and exit non-zero when anything is wrong."""
    report = open_store(ctx).verify(agent, version)
    if as_json:
        echo_json({"ok": report.ok, "checked": report.checked, "problems": report.problems, "notes": report.notes})
    else:
        for item in report.checked:
            click.echo(f"checked {item}")
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
        for problem in report.problems:
            click.echo(f"problem: {problem}", err=True)
    if not report.ok:
        raise IntegrityError(f"verify found {len(report.problems)} problem(s): {report.problems[0]}")
    if not as_json:
        click.echo(f"ok: {len(report.checked)} version(s) intact")


@store.command("recover")
@click.argument("agent")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def recover(ctx: click.Context, agent: str, as_json: bool) -> None:
    """Finish or undo what a crashed write left of AGENT, remove its leftovers, and rebuild `current` and the
    agent map from the journal where they disagree with it. Says each thing it did."""
    store = open_store(ctx)
    recovery = store.recover(agent)
    say = progress_echo(as_json)
    for line in recovery.done:
        say(f"{agent}: {line}")
    for problem in recovery.problems:
        click.echo(f"problem: {problem}", err=True)
    if recovery.problems:
        raise IntegrityError(f"recover could not repair {agent}: {recovery.problems[0]}")
    if as_json:
        echo_json({"agent": agent, "recovered": bool(recovery), "current": store.current(agent)})
    elif recovery:
        click.echo(f"{agent}: {store.current(agent) or 'nothing'} is in service")
    else:
        click.echo(f"{agent}: nothing to recover")


@store.command("gc")
@click.argument("agent")
@click.option("--keep", type=click.IntRange(min=0), required=True, help="How many of the newest versions to keep.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def gc(ctx: click.Context, agent: str, keep: int, dry_run: bool, as_json: bool) -> None:
    """Remove AGENT's older versions; the one in service and the rollback target always stay."""
    result = open_store(ctx).gc(agent, keep, dry_run=dry_run)
    if as_json:
        echo_json({"agent": agent, "removed": result.removed, "kept": result.kept, "dry_run": result.dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    for label in result.removed:
        click.echo(f"{verb} {agent} {label}")
    click.echo(f"kept {len(result.kept)} version(s): {', '.join(result.kept) or '-'}")


@store.command("history")
@click.argument("agent")
@click.option("--limit", type=click.IntRange(min=1), help="Only the newest N entries.")
@click.option(
    "--at", "at", metavar="TIME", help="Only the journal up to TIME, and the version in service then. " + AT_HELP
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def history(ctx: click.Context, agent: str, limit: int | None, at: str | None, as_json: bool) -> None:
    """Show AGENT's journal: every publish, promote, rollback and gc removal (oldest first)."""
    model_store = open_store(ctx)
    in_service = None
    if at is None:
        entries = model_store.history(agent, limit=limit)
    else:
        in_service, entries = _in_service_at(model_store, agent, at)
        entries = entries[-limit:] if limit else entries
    if as_json:
        echo_json({"agent": agent, "entries": entries, **({"at": at, "in_service": in_service} if at else {})})
        return
    for entry in entries:
        moved = f"  current {entry['previous'] or '-'} -> {entry['current'] or '-'}"
        click.echo(f"{entry['when']}  {entry['action']:<8} {entry['version']}{moved}  by {entry['who']}")
    if at is not None:
        click.echo(f"in service at {at}: {agent} {in_service or '(none)'}")


@store.command("pull")
@click.argument("source", type=StoreRoot())
@click.argument("local_root", type=click.Path(path_type=Path, file_okay=False))
@click.argument("agents", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every version, not only the ones in service.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def pull(
    ctx: click.Context, source: str, local_root: Path, agents: tuple[str, ...], every: bool, as_json: bool
) -> None:
    """Mirror AGENTS' versions in service (default: every agent) from SOURCE (s3://…) into LOCAL_ROOT.

    Every file's sha256 is checked, versions already there are not fetched again, and LOCAL_ROOT's
    AGENT_MODEL_MAP.json (or --agent-map) is written last, in one atomic replace.
    """
    from jnreg.registry import ModelStore
    from jnreg.registry.pull import pull as pull_versions

    if not str(source).startswith("s3://"):
        raise StoreError(f"SOURCE must be an object store (s3://bucket/prefix), not {source}")
    result = pull_versions(
        trusting(ctx, ModelStore(source)), ModelStore(local_root, settings(ctx).agent_map), list(agents), every=every
    )
    if as_json:
        echo_json({"source": source, "root": str(local_root), **asdict(result)})
        return
    for item in result.fetched:
        click.echo(f"fetched {item}")
    for agent, current in result.current.items():
        click.echo(f"{agent}: {current or '-'} in service")
    click.echo(f"{len(result.fetched)} version(s) fetched, {len(result.kept)} already there")
