"""Tokenized rows as Arrow files: made in parallel, kept on disk, reused while nothing that shapes them changes.

An entry lives in ``$JNREG_CACHE/data/<key>/`` (default ``~/.cache/jnreg``; ``$JNREG_DATA_CACHE``
names another directory), beside the built model, so a dry run, the training run after it and
every rerun share it whatever their output directories. The key is a digest of the checked rows
(their text and where each came from), the train/eval split, the tokenizer (vocabulary, merges,
chat template, special tokens), the agent's template and system prompt, ``--prompt-template``,
the length limit and what happens to longer rows, and the data options. An entry is written in a
private directory and renamed into place whole, so a reader sees a complete entry or none; the
least recently used beyond ``KEEP`` are removed, except those a live process holds a lease on (a
shared lock on the entry's ``lease`` file, taken by ``lookup`` and released when the entry is dropped
or the process ends): a run reads its entry's files until it ends, so sharing the cache with other
runs must not remove them under it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.core.data import rows as data_mod
from jnreg.core.data.lease import Lease, hold, unheld
from jnreg.core.models.tiny import cache_dir as models_cache_dir
from jnreg.errors import DataError
from jnreg.fsutil import atomic_write, dump_json
from jnreg.names import EVAL_ROWS_FILE
from jnreg.schemas import errors as schema_errors

if TYPE_CHECKING:
    import pyarrow as pa
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

FORMAT_VERSION = 2
META_FILE = "meta.json"
KEEP = 8  # entries kept; each is about 5 bytes per token of its rows
CHUNK = 256  # rows per worker task and per Arrow record batch
STALE_TMP_S = 24 * 3600


def cache_root() -> Path:
    """``$JNREG_DATA_CACHE``, else ``data`` under ``$JNREG_CACHE`` (default ``~/.cache/jnreg``)."""
    chosen = os.environ.get("JNREG_DATA_CACHE", "").strip()
    return Path(chosen) if chosen else models_cache_dir().parent / "data"


def workers() -> int:
    """Processes that tokenize: ``$JNREG_DATA_WORKERS``, else one per core (at most 8)."""
    wanted = os.environ.get("JNREG_DATA_WORKERS", "").strip()
    if wanted:
        try:
            return max(1, int(wanted))
        except ValueError:
            raise DataError(f"JNREG_DATA_WORKERS must be a whole number, got {wanted!r}") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A digest of everything in the tokenizer that can change token ids or the chat text."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    extra = {
        "class": type(tokenizer).__name__,
        "chat_template": tokenizer.chat_template,
        "special": {k: str(v) for k, v in getattr(tokenizer, "special_tokens_map", {}).items()},
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "added": {str(k): str(v) for k, v in sorted(getattr(tokenizer, "added_tokens_decoder", {}).items())},
    }
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


# ---------------------------------------------------------------- checked rows, spilled to disk


@dataclass
class CheckedStream:
    """Checked rows written to an Arrow file as they stream by, with their digests and count."""

    path: Path | None
    count: int = 0
    sha256: str = ""  # the data report's digest: the rows' content, as CheckedData.sha256
    identity: str = ""  # content and where each row came from: what the tokenized rows depend on
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"rows": self.count, "sha256": self.sha256, "identity": self.identity, "skipped": self.skipped}

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> CheckedStream:
        return cls(None, summary["rows"], summary["sha256"], summary["identity"], list(summary["skipped"]))

    def examples(self, start: int = 0) -> Iterator[list[data_mod.Example]]:
        """The rows again, in batches, in the order they were checked."""
        import pyarrow as pa

        assert self.path is not None, "the checked rows were not kept"

        # Read, not memory-mapped: mapped pages would count in the process's memory as it goes.
        with pa.OSFile(str(self.path)) as source:
            reader = pa.ipc.open_stream(source)
            seen = 0
            for batch in reader:
                if seen + batch.num_rows <= start:
                    seen += batch.num_rows
                    continue
                rows = batch.to_pylist()[max(0, start - seen) :]
                seen += batch.num_rows
                yield [data_mod.Example(**row) for row in rows]

    def example(self, index: int) -> data_mod.Example:
        for batch in self.examples(index):
            return batch[0]
        raise IndexError(index)


_EXAMPLE_FIELDS = ("where", "text", "prompt", "response")


def spill(examples: Iterable[data_mod.Example], path: Path, skipped: list[str]) -> CheckedStream:
    """Write ``examples`` to ``path`` a batch at a time, digesting them on the way."""
    import pyarrow as pa

    schema = pa.schema([(name, pa.string()) for name in _EXAMPLE_FIELDS])
    content, identity = hashlib.sha256(), hashlib.sha256()
    stream = CheckedStream(path, skipped=skipped)
    columns: dict[str, list[str | None]] = {name: [] for name in _EXAMPLE_FIELDS}
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:

        def flush() -> None:
            if columns["where"]:
                writer.write_batch(
                    pa.record_batch([pa.array(columns[n], pa.string()) for n in _EXAMPLE_FIELDS], schema)
                )
                for values in columns.values():
                    values.clear()

        for example in examples:
            canonical = example.canonical()
            content.update(canonical)
            content.update(b"\n")
            identity.update(example.where.encode("utf-8"))
            identity.update(b"\0")
            identity.update(canonical)
            identity.update(b"\n")
            for name in _EXAMPLE_FIELDS:
                columns[name].append(getattr(example, name))
            stream.count += 1
            if len(columns["where"]) >= CHUNK:
                flush()
        flush()
    stream.sha256, stream.identity = content.hexdigest(), identity.hexdigest()
    return stream


# ---------------------------------------------------------------- tokenized rows


@dataclass
class TokenizedSet:
    """One split's tokenized rows in an Arrow file, with the counts the data report gives."""

    path: Path
    count: int
    prompt_tokens: int
    response_tokens: int
    supervised_tokens: int
    truncated: list[str]
    dropped: list[str]
    _table: pa.Table | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_counts(cls, path: Path, counts: dict[str, Any]) -> TokenizedSet:
        """The split at ``path`` with the counts its writer returned (or the entry's metadata kept)."""
        return cls(
            path,
            counts["rows"],
            counts["prompt_tokens"],
            counts["response_tokens"],
            counts["supervised_tokens"],
            list(counts["truncated"]),
            list(counts["dropped"]),
        )

    def __len__(self) -> int:
        return self.count

    def table(self) -> pa.Table:
        """The rows as a pyarrow Table mapped from the file (nothing is read until used)."""
        if self._table is None:
            import pyarrow as pa

            self._table = pa.ipc.open_stream(pa.memory_map(str(self.path))).read_all()
        return self._table

    @property
    def dataset(self) -> Dataset:
        """A ``datasets.Dataset`` over the file, memory-mapped: what the trainer reads."""
        from datasets import Dataset

        return Dataset.from_file(str(self.path))

    @property
    def lengths(self) -> list[int]:
        import pyarrow.compute as pc

        return pc.list_value_length(self.table()["input_ids"]).to_pylist()

    @property
    def rows(self) -> list[dict[str, list[int]]]:
        """Every row as Python lists; for small sets and tests (the trainer uses ``dataset``)."""
        return self.table().to_pylist()


def _row_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("input_ids", pa.list_(pa.int32())), ("completion_mask", pa.list_(pa.int8()))])


def tokenized_set(path: Path, rows: list[dict[str, list[int]]]) -> TokenizedSet:
    """Rows that are already tokens (``input_ids``, ``completion_mask``) as a split in an Arrow file at ``path``."""
    writer = _SplitWriter(path, max_length=max((len(r["input_ids"]) for r in rows), default=1), overlong="drop")
    for index, row in enumerate(rows):
        cut = row["completion_mask"].index(1) if 1 in row["completion_mask"] else len(row["input_ids"])
        writer.add(f"row {index + 1}", row["input_ids"][:cut], row["input_ids"][cut:])
    counts = writer.close()
    return TokenizedSet.from_counts(path, counts)


class _SplitWriter:
    """Rows of one split into an Arrow stream file, with the data report's counts."""

    def __init__(self, path: Path, max_length: int, overlong: str) -> None:
        import pyarrow as pa

        self.path, self.max_length, self.overlong = path, max_length, overlong
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, _row_schema())
        self._ids: list[list[int]] = []
        self._masks: list[list[int]] = []
        self.count = self.prompt_tokens = self.response_tokens = 0
        self.truncated: list[str] = []
        self.dropped: list[str] = []

    def add(self, where: str, prompt: list[int], completion: list[int]) -> bool:
        """Whether the row was kept (``fit`` decides: as it is, left-truncated, or dropped)."""
        kept = data_mod.fit(prompt, completion, self.max_length, self.overlong)
        if kept is None:
            self.dropped.append(data_mod.too_long(where, prompt, completion, self.max_length))
            return False
        if kept is not prompt:
            self.truncated.append(where)
        self.count += 1
        self.prompt_tokens += len(kept)
        self.response_tokens += len(completion)
        self._ids.append(kept + completion)
        self._masks.append([0] * len(kept) + [1] * len(completion))
        if len(self._ids) >= CHUNK:
            self._flush()
        return True

    def _flush(self) -> None:
        import pyarrow as pa

        if self._ids:
            schema = _row_schema()
            arrays = [pa.array(self._ids, schema.field(0).type), pa.array(self._masks, schema.field(1).type)]
            self._writer.write_batch(pa.record_batch(arrays, schema))
            self._ids, self._masks = [], []

    def close(self) -> dict[str, Any]:
        self._flush()
        self._writer.close()
        self._sink.close()
        return {
            "rows": self.count,
            "prompt_tokens": self.prompt_tokens,
            "response_tokens": self.response_tokens,
            # Every kept completion token carries loss.
            "supervised_tokens": self.response_tokens,
            "truncated": self.truncated,
            "dropped": self.dropped,
        }


_worker_renderer: data_mod.Renderer | None = None


def _init_worker(renderer: data_mod.Renderer) -> None:
    global _worker_renderer
    _worker_renderer = renderer


def _render_in_worker(examples: list[data_mod.Example]) -> list[tuple[list[int], list[int]]]:
    assert _worker_renderer is not None
    return _worker_renderer.render_many(examples)


def _rendered(
    batches: Iterable[list[data_mod.Example]], renderer: data_mod.Renderer, processes: int
) -> Iterator[tuple[data_mod.Example, tuple[list[int], list[int]]]]:
    """Each example with its (prompt, completion) ids, in order; ``processes`` > 1 renders in a pool."""
    import multiprocessing

    # Forked workers start at once with the tokenizer in place; elsewhere (macOS, Windows), and in a
    # daemonic process that may not have children, the rows are tokenized here.
    if processes <= 1 or not sys.platform.startswith("linux") or multiprocessing.current_process().daemon:
        for batch in batches:
            yield from zip(batch, renderer.render_many(batch), strict=True)
        return
    # Workers tokenize one batch each; the pool is the parallelism, so the tokenizer's own threads
    # stay off in them (it would warn about forking otherwise). A bounded window of batches in
    # flight keeps memory flat however many rows there are.
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with multiprocessing.get_context("fork").Pool(processes, _init_worker, (renderer,)) as pool:
            pending: deque[tuple[list[data_mod.Example], Any]] = deque()
            for batch in batches:
                pending.append((batch, pool.apply_async(_render_in_worker, (batch,))))
                if len(pending) >= 2 * processes:
                    done, result = pending.popleft()
                    yield from zip(done, result.get(), strict=True)
            while pending:
                done, result = pending.popleft()
                yield from zip(done, result.get(), strict=True)
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def tokenize_to(
    directory: Path,
    renderer: data_mod.Renderer,
    train: CheckedStream,
    evaluation: CheckedStream | None,
    held: set[int],
    max_length: int,
    overlong: str,
) -> dict[str, Any]:
    """Tokenize the checked rows into ``train.arrow`` and ``eval.arrow`` in ``directory``; the counts.

    Rows at the ``held`` indices of ``train`` go to the eval split (none when ``evaluation`` is given),
    and the eval rows as checked to ``eval_rows.jsonl``, to be kept with the adapter.
    """
    processes = workers() if train.count + (evaluation.count if evaluation else 0) > CHUNK else 1
    train_out = _SplitWriter(directory / "train.arrow", max_length, overlong)
    eval_out = _SplitWriter(directory / "eval.arrow", max_length, overlong)
    eval_in = len(held) + (evaluation.count if evaluation else 0)
    held_rows = (directory / EVAL_ROWS_FILE).open("w", encoding="utf-8")
    try:
        index = 0
        for example, (prompt, completion) in _rendered(train.examples(), renderer, processes):
            if index in held:
                if eval_out.add(example.where, prompt, completion):  # a dropped row was not evaluated
                    held_rows.write(data_mod.row_line(example))
            else:
                train_out.add(example.where, prompt, completion)
            index += 1
        if evaluation is not None:
            for example, (prompt, completion) in _rendered(evaluation.examples(), renderer, processes):
                if eval_out.add(example.where, prompt, completion):
                    held_rows.write(data_mod.row_line(example))
    finally:
        held_rows.close()
        train_counts, eval_counts = train_out.close(), eval_out.close()
    if not train_counts["rows"] or (eval_in and not eval_counts["rows"]):
        raise data_mod.no_rows_fit(max_length)
    if not eval_in:
        (directory / "eval.arrow").unlink()
        (directory / EVAL_ROWS_FILE).unlink()
    return {"train": train_counts, "eval": eval_counts if eval_in else None}


# ---------------------------------------------------------------- the cache


def cache_key(parts: dict[str, Any]) -> str:
    document = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(document.encode("utf-8")).hexdigest()[:32]


def _entry(directory: Path, meta: dict[str, Any], lease: Lease | None = None) -> Entry:
    def one(name: str) -> TokenizedSet | None:
        counts = meta[name]
        if counts is None:
            return None
        return TokenizedSet.from_counts(directory / f"{name}.arrow", counts)

    train = one("train")
    assert train is not None
    checked = meta["checked"]
    return Entry(
        train,
        one("eval"),
        CheckedStream.from_summary(checked["train"]),
        CheckedStream.from_summary(checked["eval"]) if checked["eval"] else None,
        data_mod.Example(**checked["first_example"]),
        directory / EVAL_ROWS_FILE if meta["eval"] is not None else None,
        lease,
    )


@dataclass
class Entry:
    """A cache entry: the tokenized splits and what its meta.json says about the checked rows."""

    train: TokenizedSet
    eval: TokenizedSet | None
    checked: CheckedStream
    eval_checked: CheckedStream | None
    first_example: data_mod.Example
    eval_rows: Path | None = None
    lease: Lease | None = field(default=None, repr=False, compare=False)  # keep it while the files are used


def files_digest(groups: Iterable[Iterable[Path]]) -> str:
    """A digest of data files' names and bytes, read in blocks."""
    digest = hashlib.sha256()
    for group in groups:
        digest.update(b"\1")
        for path in group:
            digest.update(str(path).encode("utf-8") + b"\0")
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()


def lookup(key: str) -> Entry | None:
    """The entry for ``key`` when a whole, valid one is there, leased to this process; the use is recorded."""
    directory = cache_root() / key
    if not directory.is_dir():
        return None
    lease = hold(directory)  # before the checks: an entry checked and then evicted would be no entry
    meta = _whole(directory, key)
    if meta is None:
        if lease is not None:
            lease.release()
        return None
    try:
        os.utime(directory / META_FILE)
    except OSError:
        pass
    return _entry(directory, meta, lease)


def _whole(directory: Path, key: str) -> dict[str, Any] | None:
    """The entry's meta.json when it is valid and names every file, and those files are there."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if schema_errors("data_cache", meta) or meta.get("key") != key:
        return None
    files = [directory / "train.arrow"]
    files += [directory / "eval.arrow", directory / EVAL_ROWS_FILE] if meta["eval"] is not None else []
    return meta if all(f.is_file() for f in files) else None


def scratch() -> Path:
    """A private directory under the cache root for one run's work; ``store`` or ``discard`` it."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    directory = root / f"tmp-{os.getpid()}-{secrets.token_hex(4)}"
    directory.mkdir()
    return directory


def discard(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def store(key: str, work: Path, counts: dict[str, Any], checked: dict[str, Any], parts: dict[str, Any]) -> Entry:
    """Move the tokenized files in ``work`` into the entry for ``key`` and return it."""
    meta = {"schema_version": 1, "format": FORMAT_VERSION, "key": key, "inputs": parts, "checked": checked, **counts}
    problems = schema_errors("data_cache", meta)
    assert not problems, problems
    entry = work / "entry"
    entry.mkdir()
    for name in ("train.arrow", "eval.arrow", EVAL_ROWS_FILE):
        if (work / name).exists():
            os.replace(work / name, entry / name)
    atomic_write(entry / META_FILE, dump_json(meta).encode("utf-8"))
    target = cache_root() / key
    try:
        os.rename(entry, target)
    except OSError:
        # Another run stored the same key first, or an incomplete one is in the way.
        if lookup(key) is None:
            shutil.rmtree(target, ignore_errors=True)
            try:
                os.rename(entry, target)
            except OSError:
                pass
    found = lookup(key)
    if found is None:  # the cache directory is unusable; keep the run going from wherever the files are
        return _entry(entry if entry.is_dir() else target, meta)
    prune(keep=key)
    return found


def prune(keep: str | None = None, limit: int | None = None) -> None:
    """Remove entries beyond the ``limit`` most recently used, and scratch left by dead runs."""
    root = cache_root()
    now = time.time()
    entries = []
    for path in root.iterdir() if root.is_dir() else ():
        try:
            if path.name.startswith("tmp-"):
                if now - path.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(path, ignore_errors=True)
                continue
            entries.append(((path / META_FILE).stat().st_mtime, path))
        except OSError:
            continue
    entries.sort(reverse=True)
    for _, path in entries[KEEP if limit is None else limit :]:
        if path.name != keep:
            _evict(path)


def _evict(path: Path) -> None:
    """Remove the entry at ``path`` unless a process holds a lease on it."""
    with unheld(path) as free:
        if not free:
            return
        # Renamed away first, under the lock: a reader waiting for its lease then finds no entry,
        # never a half-removed one, and a new entry for the key can be stored at once.
        doomed = path.with_name(f"tmp-{os.getpid()}-{secrets.token_hex(4)}-evicted")
        try:
            os.rename(path, doomed)
        except OSError:
            doomed = path
        shutil.rmtree(doomed, ignore_errors=True)


def options_document(options: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}
