"""What is kept beside a version, never inside it (so the version and its digest never change): its
evaluations, each with its per-row verdicts, and its page."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from jnreg import __version__
from jnreg.errors import IntegrityError, StoreError
from jnreg.registry import journal
from jnreg.schemas import validate

if TYPE_CHECKING:
    from jnreg.registry.storage.base import Storage


def _rows_of(data: bytes | None, document: dict[str, Any]) -> list[dict[str, Any]]:
    where = f"rows of evaluation {document['id']}"
    if data is None:
        raise IntegrityError(f"the {where} are missing")
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IntegrityError(f"line {number} of the {where} is not valid JSON: {exc}") from None
        validate("eval_row", row, f"line {number} of the {where}")
        rows.append(row)
    return rows


class VersionRecords:
    """The ModelStore's rules for evaluations and pages; ``manifest`` and ``storage`` come from the store."""

    storage: Storage

    def manifest(self, agent: str, version: str) -> dict[str, Any]:
        raise NotImplementedError

    def record_evaluation(
        self, agent: str, version: str, record: dict[str, Any], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Keep an evaluation of a published version: its rows file, then its record (which makes it count)."""
        manifest = self.manifest(agent, version)
        if record.get("digest") != manifest["digest"]:
            raise IntegrityError(f"the evaluation is of digest {record.get('digest')}, not of {agent} {version}")
        eval_id = datetime.now(timezone.utc).strftime("e%Y%m%dT%H%M%SZ-") + os.urandom(4).hex()
        document = {
            **record,
            "id": eval_id,
            "agent": agent,
            "version": version,
            "created_at": journal.now(),
            "created_by": journal.who(),
            "rows_file": f"{eval_id}.rows.jsonl",
            "jnreg_version": __version__,
        }
        validate("evaluation", document, f"evaluation of {agent} {version}", error=StoreError)
        for row in rows:
            validate("eval_row", row, f"evaluation row {row.get('index')} of {agent} {version}", error=StoreError)
        text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
        self.storage.write_evaluation(agent, version, document, text.encode("utf-8"))
        return document

    def evaluation_location(self, agent: str, version: str, name: str) -> str:
        """Where the evaluation file ``name`` of the version is kept, for people to read."""
        return self.storage.evaluation_location(agent, version, name)

    def evaluations(self, agent: str, version: str) -> list[dict[str, Any]]:
        """The validated evaluations recorded for ``agent`` ``version``, oldest first."""
        found = []
        for where, stem, data in self.storage.evaluation_documents(agent, version):
            try:
                document = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise IntegrityError(f"evaluation {where} is not valid JSON: {exc}") from None
            validate("evaluation", document, f"evaluation {where}")
            if document["agent"] != agent or document["version"] != version or stem != document["id"]:
                raise IntegrityError(f"evaluation {where} is of {document['agent']} {document['version']}")
            found.append(document)
        return sorted(found, key=lambda d: (d["created_at"], d["id"]))

    def evaluation_rows(self, agent: str, version: str, document: dict[str, Any]) -> list[dict[str, Any]]:
        """The per-row verdicts of an evaluation that ``evaluations`` returned."""
        return _rows_of(self.storage.read_evaluation_file(agent, version, document["rows_file"]), document)

    # The version's page ------------------------------------------------------------------------------------

    def report_location(self, agent: str, version: str) -> str:
        """Where the page of ``agent`` ``version`` is kept, for people to open."""
        return self.storage.report_location(agent, version)

    def write_report(self, agent: str, version: str, page: bytes) -> str:
        """Keep ``page`` as the version's report, replacing the one before; where it is."""
        self.manifest(agent, version)  # only a published version has a page
        self.storage.write_report(agent, version, page)
        return self.report_location(agent, version)

    def read_report(self, agent: str, version: str) -> bytes | None:
        return self.storage.read_report(agent, version)

    def version_file(self, agent: str, version: str, name: str) -> bytes | None:
        """The bytes of the published file ``name`` of the version, or None when the version has no such file."""
        manifest = self.manifest(agent, version)
        if name not in {entry["path"] for entry in manifest["files"]}:
            return None
        return self.storage.read_version_file(agent, version, name)
