"""What a version's page shows, read from the store: manifest, summary, per-step log, config, evaluations, journal."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jnreg.errors import IntegrityError
from jnreg.names import CONFIG_FILE, TRAINING_LOG_FILE
from jnreg.schemas import validate


@dataclass
class Evaluation:
    """One recorded evaluation, its failed rows, and the other versions' evaluations on the same rows."""

    document: dict[str, Any]
    failed: list[dict[str, Any]]
    compared: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class VersionDocuments:
    agent: str
    version: str
    manifest: dict[str, Any]
    log: dict[str, Any] | None
    config: dict[str, Any] | None
    evaluations: list[Evaluation]
    history: list[dict[str, Any]]
    in_service: bool

    @property
    def summary(self) -> dict[str, Any] | None:
        return self.manifest.get("training_summary")


def failed(row: dict[str, Any]) -> bool:
    """A row whose answer is not JSON, breaks the schema, or misses an exact-match field."""
    return row["json"] is False or row["schema_valid"] is False or not all(row["exact_match"].values())


def _json_file(store: Any, agent: str, version: str, name: str, schema: str) -> dict[str, Any] | None:
    data = store.version_file(agent, version, name)
    if data is None:
        return None
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{name} of {agent} {version} is not valid JSON: {exc}") from None
    validate(schema, document, f"{name} of {agent} {version}")
    return document


def touches(entry: dict[str, Any], version: str) -> bool:
    """A journal entry about ``version``: made for it, or moving service to or from it."""
    return version in (entry["version"], entry["current"], entry["previous"])


@dataclass
class AgentRecords:
    """What every page of one agent reads alike: each version's evaluations, the journal, the version in service."""

    evaluations: dict[str, list[dict[str, Any]]]
    history: list[dict[str, Any]]
    current: str | None


def agent_records(store: Any, agent: str) -> AgentRecords:
    """The agent's records, read once for all its pages."""
    evaluations = {label: store.evaluations(agent, label) for label in store.version_labels(agent)}
    return AgentRecords(evaluations, store.history(agent), store.current(agent))


def gather(store: Any, agent: str, version: str, *, records: AgentRecords | None = None):
    """Everything the page of ``agent`` ``version`` shows; ``records`` when one caller makes many of its pages."""
    manifest = store.manifest(store.require_agent(agent), version)
    records = records or agent_records(store, agent)
    others = records.evaluations
    evaluations = []
    for document in others[version] if version in others else store.evaluations(agent, version):
        rows = store.evaluation_rows(agent, version, document)
        same_rows = document["rows_source"]["sha256"]
        compared = [
            other
            for label, documents in sorted(others.items())
            if label != version
            for other in documents
            if other["rows_source"]["sha256"] == same_rows
        ]
        evaluations.append(Evaluation(document, [row for row in rows if failed(row)], compared))
    history = [entry for entry in records.history if touches(entry, version)]
    return VersionDocuments(
        agent=agent,
        version=version,
        manifest=manifest,
        log=_json_file(store, agent, version, TRAINING_LOG_FILE, "training_log"),
        config=_json_file(store, agent, version, CONFIG_FILE, "train_config"),
        evaluations=evaluations,
        history=history,
        in_service=records.current == version,
    )
