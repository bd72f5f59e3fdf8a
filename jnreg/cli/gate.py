"""The promotion gate: a version goes into service only when its evaluation meets the requirements."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jnreg.errors import GateError, JnregError

Echo = Callable[[str], None]


def requirements_for(agent: str, given: Sequence[str]) -> list[Any]:
    """The requirements to gate ``agent`` with: ``given``, else its plugin's default; checked now, before any work."""
    from jnreg.core.evaluation.gate import parse_requirements
    from jnreg.core.host.plugins import get_host

    found = get_host().agents().get(agent)
    spec = found.spec if found is not None else None
    texts = list(given) if given else list(spec.requirements if spec is not None else ())
    return parse_requirements(texts, spec.response_schema if spec is not None else None)


def check_requirements(store: Any, agent: str, version: str, requirements: Sequence[Any], echo: Echo) -> dict | None:
    """The evaluation that meets ``requirements`` (the latest whole one recorded, else a new one); GateError when short.

    Only an evaluation of every recorded eval row counts: one cut short by ``--limit``, or made on other
    files, says too little about the version to put it in service.
    """
    from jnreg.core.evaluation.gate import shortfalls

    if not requirements:
        return None
    recorded = [
        document
        for document in store.evaluations(agent, version)
        if document["settings"]["limit"] is None and document["rows_source"]["kind"] == "recorded"
    ]
    if recorded:
        document = recorded[-1]
        echo(f"checking {', '.join(map(str, requirements))} against evaluation {document['id']}")
    else:
        wanted = ", ".join(map(str, requirements))
        echo(f"{agent} {version} has no evaluation of all its recorded eval rows yet; evaluating it for {wanted}")
        from jnreg.cli.evaluate import evaluate_version

        document, _ = evaluate_version(store, agent, version, progress=sys.stderr.isatty())
    missed = shortfalls(requirements, document["metrics"])
    if missed:
        raise GateError(f"{'; '.join(missed)} [evaluation {document['id']}]")
    return document


def gated_promote(store: Any, agent: str, version: str, requirements: Sequence[Any], echo: Echo) -> Any:
    """Promote ``version`` once it meets ``requirements``; a version that falls short stays out of service."""
    store.manifest(store.require_agent(agent), version)  # a version that does not exist is not a gate failure
    try:
        check_requirements(store, agent, version, requirements, echo)
    except JnregError as exc:
        raise GateError(f"{agent} {version} not put in service: {exc}") from None
    return store.promote(agent, version)


def gated_publish(
    store: Any, agent: str, directory: Any, requirements: Sequence[Any], echo: Echo, *, promote: bool = True, **options
) -> Any:
    """Publish; with requirements, the version is stored out of service, checked, and promoted only if it passes.

    The version's page is written beside it either way, so a version kept out of service shows why.
    """
    from jnreg.cli.report import refresh_page

    if not requirements or not promote:
        result = store.publish(agent, directory, promote=promote, **options)
        refresh_page(store, agent, result.version, echo)
        return result
    result = store.publish(agent, directory, promote=False, **options)
    try:
        check_requirements(store, agent, result.version, requirements, echo)
    except JnregError as exc:
        refresh_page(store, agent, result.version, echo)
        raise GateError(f"published {agent} {result.version} but did not put it in service: {exc}") from None
    store.promote(agent, result.version)
    refresh_page(store, agent, result.version, echo)
    return dataclasses.replace(result, promoted=True)
