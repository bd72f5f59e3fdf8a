"""Evaluate, record and gate: putting a stored version in service only when its evaluation meets requirements.

The command line's ``eval``, ``store publish/promote --require`` and ``train --publish --require`` call
these, and so can an orchestrator::

    from jnreg import release
    release.promote("s3://bucket/store", "fact_checker", "v3", require=["schema_valid>=0.95"])

``require`` means what the ``--require`` flags mean: the requirements given, else the agent plugin's
default ones (``AgentSpec.requirements``); a version with none to meet goes in service unchecked.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.core.evaluation.gate import Requirement, parse_requirements, shortfalls
from jnreg.errors import ConfigError, DataError, GateError, JnregError
from jnreg.names import EVAL_ROWS_FILE
from jnreg.registry.manifests import prompt_format

if TYPE_CHECKING:
    from jnreg.core.host.spec import AgentSpec
    from jnreg.registry.store import ModelStore, PublishResult

Echo = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


def _unchanged(_version: str) -> None:
    pass


def open_store(store: ModelStore | Path | str) -> ModelStore:
    """``store`` itself, or the ModelStore at that root (a directory or ``s3://bucket/prefix``)."""
    from jnreg.registry.store import ModelStore

    return store if isinstance(store, ModelStore) else ModelStore(store)


def _spec(agent: str) -> AgentSpec:
    from jnreg.core.host.plugins import get_host

    return get_host().get(agent).spec


def requirements_for(agent: str, require: Iterable[str | Requirement] = ()) -> list[Requirement]:
    """The requirements to gate ``agent`` with: ``require``, else its plugin's default; checked now, before any work."""
    from jnreg.core.host.plugins import get_host

    found = get_host().agents().get(agent)
    spec = found.spec if found is not None else None
    schema = spec.response_schema if spec is not None else None
    given = list(require) or list(spec.requirements if spec is not None else ())
    return [item if isinstance(item, Requirement) else parse_requirements([item], schema)[0] for item in given]


def spec_as_trained(spec: AgentSpec, manifest: dict[str, Any]) -> tuple[AgentSpec, str | None]:
    """(the agent's spec with the system prompt and user message the version was trained on, its prompt template).

    A version trained before its summary recorded this is taken as prompted the way its agent is now.
    """
    from jnreg.core.host.spec import PromptTemplate

    found = prompt_format(manifest)
    if found is None:
        return spec, None
    template = PromptTemplate(system=found["system"], user=found["user"])
    return dataclasses.replace(spec, template=template), found.get("prompt_template")


def evaluate_version(
    store: ModelStore | Path | str,
    agent: str,
    version: str,
    *,
    eval_files: Sequence[str | Path] = (),
    limit: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
    quantization: str = "nf4",
    progress: bool = False,
    engine: str = "transformers",
    server: str | None = None,
    on_change: Callable[[str], None] = _unchanged,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load ``version`` through ``jnreg.registry.load``, evaluate it, record the result; (record, rows).

    Without ``eval_files`` the held-out rows recorded with the version are used; prompts are rendered
    the way the version was trained. ``on_change(version)`` runs once the result is recorded (to
    refresh what shows the version, such as its page). ``engine="vllm"`` asks vLLM (``server``, a
    running ``jnreg serve``, else one started for it), which serves the unquantized base, so the
    evaluation records quantization "none".
    """
    from jnreg.core.data.rows import expand_files
    from jnreg.core.evaluation.evaluate import evaluate, read_eval_rows, rows_digest
    from jnreg.core.models.loading import quiet_library_warnings
    from jnreg.registry import load

    store = open_store(store)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature is not None and not temperature >= 0:  # NaN fails this too
        raise ConfigError(f"temperature must be a number >= 0, got {temperature}")
    manifest = store.manifest(store.require_agent(agent), version)
    spec, prompt_template = spec_as_trained(_spec(agent), manifest)
    if eval_files:
        files, kind = [str(p.absolute()) for p in expand_files([str(f) for f in eval_files])], "files"
    else:
        recorded = store.resolve(agent, version).adapter_path / EVAL_ROWS_FILE  # a local copy on an object store
        if not recorded.is_file():
            raise DataError(
                f"{agent} {version} has no eval rows recorded with it (no {EVAL_ROWS_FILE}); pass --eval-files"
            )
        files, kind = [str(recorded)], "recorded"
    examples = read_eval_rows(files, spec)
    available = len(examples)
    if limit is not None:
        examples = examples[:limit]
    quiet_library_warnings()
    # How each row is answered, whichever engine answers it.
    answering = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "progress": progress,
        "prompt_template": prompt_template,
    }
    if engine == "vllm":
        from jnreg.serve.evaluation import evaluate_served

        quantization = "none"
        result = evaluate_served(
            store,
            agent,
            version,
            spec,
            examples,
            server=server,
            **answering,
        )
    else:
        model, tokenizer = load(agent, version, None if quantization == "none" else quantization, store=store)
        try:
            result = evaluate(
                model,
                tokenizer,
                spec,
                examples,
                **answering,
            )
        finally:
            del model
            gc.collect()
    record = {
        "schema_version": 1,
        "digest": manifest["digest"],
        "rows_source": {
            "kind": kind,
            "files": [EVAL_ROWS_FILE] if kind == "recorded" else files,
            "sha256": rows_digest(examples),
            "rows": available,
        },
        "settings": {
            "max_new_tokens": max_new_tokens or spec.serving.max_new_tokens,
            "temperature": spec.serving.temperature if temperature is None else temperature,
            "seed": seed,
            "limit": limit,
            "quantization": quantization,
            # Only the other engine is named, so documents made before there was a choice read the same.
            **({"engine": engine} if engine != "transformers" else {}),
        },
        "metrics": result.metrics,
        "details": result.details,
    }
    document = store.record_evaluation(agent, version, record, result.rows)
    on_change(version)
    return document, result.rows


def whole_evaluation(store: ModelStore, agent: str, version: str) -> dict[str, Any] | None:
    """The latest evaluation of every eval row recorded with the version, or None.

    Only such an evaluation counts for the gate: one cut short by a limit, or made on other files,
    says too little about the version to put it in service.
    """
    recorded = [
        document
        for document in store.evaluations(agent, version)
        if document["settings"]["limit"] is None and document["rows_source"]["kind"] == "recorded"
    ]
    return recorded[-1] if recorded else None


def check(
    store: ModelStore | Path | str,
    agent: str,
    version: str,
    requirements: Sequence[Requirement],
    *,
    echo: Echo = _quiet,
    progress: bool = False,
    on_change: Callable[[str], None] = _unchanged,
) -> dict[str, Any] | None:
    """The evaluation that meets ``requirements`` (the latest whole one recorded, else a new one); GateError when short.

    None when there are no requirements to meet.
    """
    store = open_store(store)
    if not requirements:
        return None
    wanted = ", ".join(map(str, requirements))
    document = whole_evaluation(store, agent, version)
    if document is not None:
        echo(f"checking {wanted} against evaluation {document['id']}")
    else:
        resolution = store.resolve(agent, version)
        if not (resolution.adapter_path / EVAL_ROWS_FILE).is_file():
            raise GateError(
                f"{agent} {version} has no eval rows recorded with it ({EVAL_ROWS_FILE}), so {wanted} cannot be "
                "checked: the gate counts only an evaluation of the rows held out when it was trained"
            )
        echo(f"{agent} {version} has no evaluation of all its recorded eval rows yet; evaluating it for {wanted}")
        document, _ = evaluate_version(store, agent, version, progress=progress, on_change=on_change)
    missed = shortfalls(requirements, document["metrics"])
    if missed:
        raise GateError(f"{'; '.join(missed)} [evaluation {document['id']}]")
    return document


def promote(
    store: ModelStore | Path | str,
    agent: str,
    version: str,
    *,
    require: Iterable[str | Requirement] = (),
    echo: Echo = _quiet,
    progress: bool = False,
    on_change: Callable[[str], None] = _unchanged,
) -> dict[str, Any] | None:
    """Put ``version`` in service once it meets ``require``; its journal entry, or None when it already is in service.

    A version that falls short stays out of service (GateError). One already in service is left as it
    is, its requirements unchecked: nothing would change.
    """
    store = open_store(store)
    requirements = requirements_for(agent, require)
    store.manifest(store.require_agent(agent), version)  # a version that does not exist is not a gate failure
    if requirements and _in_service(store, agent) == version:
        echo(f"{agent} {version} is already in service; nothing changes, so {', '.join(map(str, requirements))} "
             "was not checked")  # fmt: skip
        return store.promote(agent, version)
    try:
        check(store, agent, version, requirements, echo=echo, progress=progress, on_change=on_change)
    except JnregError as exc:
        raise GateError(f"{agent} {version} not put in service: {exc}") from None
    return store.promote(agent, version)


def _in_service(store: ModelStore, agent: str) -> str | None:
    try:
        return store.current(agent)
    except JnregError:
        return None  # a damaged `current` is what promote repairs


def publish(
    store: ModelStore | Path | str,
    agent: str,
    directory: Path | str,
    *,
    require: Iterable[str | Requirement] = (),
    promote: bool = True,
    adapter_name: str | None = None,
    version: str | None = None,
    base_model: str | None = None,
    sign_key: Path | str | None = None,
    echo: Echo = _quiet,
    progress: bool = False,
    on_change: Callable[[str], None] = _unchanged,
) -> PublishResult:
    """Publish the adapter in ``directory``; with requirements it is stored out of service, checked, then promoted.

    A version that falls short stays stored, out of service (GateError). ``require`` with
    ``promote=False`` is refused: there would be nothing to gate. ``on_change(version)`` runs once
    the outcome is stored, whichever it is.
    """
    store = open_store(store)
    given = list(require)
    if given and not promote:
        raise ConfigError("requirements gate putting the version in service; they have no use without promoting it")
    requirements = requirements_for(agent, given) if promote else []
    options = {"adapter_name": adapter_name, "version": version, "base_model": base_model, "sign_key": sign_key}
    if not requirements:
        result = store.publish(agent, directory, promote=promote, **options)
        on_change(result.version)
        return result
    result = store.publish(agent, directory, promote=False, **options)
    try:
        check(store, agent, result.version, requirements, echo=echo, progress=progress, on_change=on_change)
    except JnregError as exc:
        on_change(result.version)
        raise GateError(f"published {agent} {result.version} but did not put it in service: {exc}") from None
    store.promote(agent, result.version)
    on_change(result.version)
    return dataclasses.replace(result, promoted=True)
