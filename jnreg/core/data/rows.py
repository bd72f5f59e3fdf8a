"""Training data: reading rows, checking them, and turning them into token ids with a loss mask."""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import math
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.core.host.spec import AgentSpec, DataOptions, PromptTemplate, Record
from jnreg.errors import DataError, first_line
from jnreg.fsutil import json_message
from jnreg.schemas import Checker, checker

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEMPLATE_FIELDS = {"prompt", "response", "system"}


def expand_files(patterns: Iterable[str]) -> list[Path]:
    """Paths and globs, expanded in sorted order; a pattern that matches nothing is an error."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        folders = [m for m in matches if Path(m).is_dir()]
        if folders:
            raise DataError(
                f"{folders[0]} is a directory, not a data file; give its files, e.g. '{folders[0]}/*.jsonl'"
            )
        if not matches or not all(Path(m).is_file() for m in matches):
            raise DataError(f"no data file matches {pattern!r}")
        files.extend(Path(m) for m in matches)
    return files


def read_file(path: Path) -> Iterator[Record]:
    """Rows of a JSONL file (one per line) or a JSON file holding a list of rows.

    A UTF-8 byte-order mark (Windows editors, spreadsheet exports) and CRLF line ends are accepted.
    """
    source = str(path)
    if path.suffix.lower() != ".json":
        yield from _read_lines(path)
        return
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}:{exc.lineno}: invalid JSON: {json_message(exc)} (column {exc.colno})") from None
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):
        rows = rows["data"]
    if not isinstance(rows, list):
        raise DataError(f"{source}: a .json data file must hold a list of rows")
    for index, row in enumerate(rows, start=1):
        yield Record(row, source, index, unit="row ")


def _binary_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as handle:
            offset = 0
            for raw in handle:  # splits on b"\n" only, which never occurs inside a UTF-8 sequence
                yield offset, raw
                offset += len(raw)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None


def _decoded_lines(path: Path) -> Iterator[str]:
    """The file's rows as text, each without its line end; a byte-order mark at the start is dropped."""
    bom = 0
    for offset, raw in _binary_lines(path):
        if offset == 0 and raw.startswith(codecs.BOM_UTF8):
            bom = len(codecs.BOM_UTF8)
            raw = raw[bom:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            # Offsets count from after a byte-order mark, as decoding the whole file with utf-8-sig does.
            where = offset + exc.start - (bom if offset else 0)
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {where})") from None
        yield text.removesuffix("\n").removesuffix("\r")


def _read_lines(path: Path) -> Iterator[Record]:
    """Rows of a JSONL file, read a line at a time so memory does not grow with the file.

    The whole file is checked to be UTF-8 before the first row, so every message is what reading
    it at once gives. Only "\n" ends a row: str.splitlines would also split at U+2028 and other
    separators that JSON strings may hold raw.
    """
    for _ in _decoded_lines(path):
        pass
    source = str(path)
    for number, line in enumerate(_decoded_lines(path), start=1):
        if not line.strip():
            continue
        try:
            yield Record(json.loads(line), source, number)
        except json.JSONDecodeError as exc:
            yield Record(None, source, number, problem=f"invalid JSON: {json_message(exc)} (column {exc.colno})")


def read_dataset(options: DataOptions) -> Iterator[Record]:
    """Rows of a ``datasets`` dataset: a directory saved with ``save_to_disk``, or a hub name."""
    name = options.dataset_name or ""
    source = f"{name}[{options.dataset_split}]"
    try:
        import datasets

        saved = Path(name)
        if saved.is_dir() and any((saved / f).exists() for f in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                if options.dataset_split not in loaded:
                    raise DataError(f"{name}: no split {options.dataset_split!r}; splits: {', '.join(loaded)}")
                loaded = loaded[options.dataset_split]
        else:
            loaded = datasets.load_dataset(name, options.dataset_config, split=options.dataset_split)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot load dataset {name!r}: {first_line(exc)}") from None
    for index, row in enumerate(loaded, start=1):
        yield Record(dict(row), source, index, unit="row ")


def default_loader(options: DataOptions, sample_data: Path | None) -> Iterator[Record]:
    """The loader every agent gets unless its plugin brings one: files, a dataset, or the samples."""
    if options.train_files:
        for path in expand_files(options.train_files):
            yield from read_file(path)
    elif options.dataset_name:
        yield from read_dataset(options)
    elif sample_data is not None:
        yield from read_file(sample_data)
    else:
        raise DataError("no training data: pass --train-files or --dataset-name")


def load_records(spec: AgentSpec, options: DataOptions, plugin: str | None = None) -> Iterator[Record]:
    """The agent's rows: through its plugin's loader when it has one, else the default loader."""
    if spec.load_dataset is None:
        yield from default_loader(options, spec.sample_data)
        return
    try:
        for index, row in enumerate(spec.load_dataset(options), start=1):
            yield row if isinstance(row, Record) else Record(row, f"{plugin or spec.name} loader", index, unit="row ")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"the dataset loader of plugin {plugin or spec.name!r} failed: {exc}") from None


def count_sample_rows(spec: AgentSpec) -> int:
    if spec.sample_data is None or not spec.sample_data.exists():
        return 0
    return sum(1 for line in spec.sample_data.read_text(encoding="utf-8").splitlines() if line.strip())


@dataclass(frozen=True)
class Example:
    """A checked row: whole ``text``, or a ``prompt`` and its ``response``."""

    where: str
    text: str | None = None
    prompt: str | None = None
    response: str | None = None
    system: str | None = None

    def canonical(self) -> bytes:
        row = {k: v for k, v in (("text", self.text), ("prompt", self.prompt), ("response", self.response)) if v}
        return json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _string_field(row: Mapping[str, Any], name: str) -> str:
    value = row[name]
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def row_line(example: Example) -> str:
    """The row as it was checked, as one JSONL line: ``{"prompt", "response"}`` or ``{"text"}``."""
    if example.text is not None:
        row = {"text": example.text}
    else:
        row = {"prompt": example.prompt, "response": example.response}
    return json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"


def response_checker(spec: AgentSpec) -> Checker | None:
    """The agent's response schema compiled, or None when it has none: what rows and answers are checked against."""
    return None if spec.response_schema is None else checker(spec.response_schema)


def check_row(record: Record, options: DataOptions, response_schema: Checker | None) -> Example:
    """The row as an Example, or ValueError saying what is wrong with it."""
    if record.problem:
        raise ValueError(record.problem)
    row = record.data
    if not isinstance(row, Mapping):
        raise ValueError(f"row must be a JSON object, got {type(row).__name__}")
    if options.text_field in row and options.prompt_field not in row:
        text = _string_field(row, options.text_field)
        if not text.strip():
            raise ValueError(f"field {options.text_field!r} is empty")
        return Example(record.where, text=text)
    missing = [f for f in (options.prompt_field, options.response_field) if f not in row]
    if missing:
        raise ValueError(
            f"missing field {missing[0]!r} (a row needs {options.text_field!r}, "
            f"or {options.prompt_field!r} and {options.response_field!r})"
        )
    prompt = _string_field(row, options.prompt_field)
    response = _string_field(row, options.response_field)
    if not prompt.strip():
        raise ValueError(f"field {options.prompt_field!r} is empty")
    if not response.strip():
        raise ValueError(f"field {options.response_field!r} is empty")
    if response_schema is not None:
        try:
            answer = json.loads(response)
        except json.JSONDecodeError as exc:
            raise ValueError(f"response is not JSON: {json_message(exc)} (column {exc.colno})") from None
        error = response_schema.first_error(answer)
        if error is not None:
            raise ValueError(f"response fails the agent's schema at {error}")
    return Example(record.where, prompt=prompt, response=response)


@dataclass
class CheckedData:
    examples: list[Example]
    skipped: list[str] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(example.canonical())
            digest.update(b"\n")
        return digest.hexdigest()


def iter_checked(
    records: Iterable[Record],
    options: DataOptions,
    spec: AgentSpec,
    skipped: list[str],
    *,
    on_bad_row: str = "fail",
    limit: int | None = None,
) -> Iterator[Example]:
    """Checked examples one at a time; a bad row raises (``fail``) or is appended to ``skipped``."""
    validator = response_checker(spec)
    count = 0
    for record in records:
        if limit is not None and count >= limit:
            break
        try:
            example = check_row(record, options, validator)
        except ValueError as exc:
            if on_bad_row == "fail":
                raise DataError(f"{record.where}: {exc} (use --on-bad-row skip to skip bad rows)") from None
            skipped.append(f"{record.where}: {exc}")
            continue
        count += 1
        yield example
    if not count:
        raise DataError("no usable training rows" + (f"; {len(skipped)} skipped" if skipped else ""))


def check_records(
    records: Iterable[Record],
    options: DataOptions,
    spec: AgentSpec,
    *,
    on_bad_row: str = "fail",
    limit: int | None = None,
) -> CheckedData:
    """Checked examples; a bad row raises (``fail``) or is counted and named (``skip``)."""
    checked = CheckedData(examples=[])
    checked.examples.extend(iter_checked(records, options, spec, checked.skipped, on_bad_row=on_bad_row, limit=limit))
    return checked


def held_out(count: int, fraction: float, seed: int) -> set[int]:
    """Indices of the rows held out for evaluation: a seeded random ``fraction`` (at least one, never all)."""
    if fraction <= 0 or count < 2:
        return set()
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return set(order[: min(count - 1, max(1, math.ceil(count * fraction)))])


class Renderer:
    """Turns examples into token ids exactly as serving sends them, and marks the trained tokens."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, template: PromptTemplate, prompt_template: str | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.prompt_template = prompt_template
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise DataError("the tokenizer has no EOS token, so the model could never learn to stop")
        if prompt_template is not None:
            if prompt_template.count("{response}") != 1 or "{prompt}" not in prompt_template:
                raise DataError("--prompt-template must contain {prompt} once and {response} exactly once")
            unknown = sorted(set(re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", prompt_template)) - TEMPLATE_FIELDS)
            if unknown:
                names = ", ".join("{" + name + "}" for name in unknown)
                raise DataError(
                    f"--prompt-template has unknown placeholder(s) {names}; use {{prompt}}, {{response}}, {{system}}"
                )
            head, tail = prompt_template.split("{response}")
            if "{prompt}" not in head:
                raise DataError("--prompt-template must put {prompt} before {response}")
            self._head, self._tail = head, tail

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def serving_prompt(self, prompt: str) -> str:
        """The text serving sends for ``prompt``: the chat template with the generation prompt."""
        if self.prompt_template is not None:
            return self._head.replace("{system}", self.template.system).replace("{prompt}", prompt)
        return self.tokenizer.apply_chat_template(
            self.template.messages(prompt), tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, prompt: str) -> list[int]:
        """The tokens of ``serving_prompt`` as serving sends them (no special tokens added), for every engine
        that answers ``prompt``."""
        return self._ids(self.serving_prompt(prompt))

    def _with_one_bos(self, ids: list[int]) -> list[int]:
        if self.bos is None:
            return ids
        start = 0
        while start < len(ids) and ids[start] == self.bos:
            start += 1
        return [self.bos, *ids[start:]]

    def _with_eos(self, ids: list[int]) -> list[int]:
        return ids if ids and ids[-1] == self.eos else [*ids, self.eos]

    def _chat(self, messages: list[dict[str, str]], **options: Any) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **options)

    def _answer_framing(self, prompt: str, response: str, prompt_text: str) -> str:
        """The text that follows the serving prompt when the model answers: the template's framing of it."""
        if self.prompt_template is not None:
            return response + self._tail
        answer = {"role": "assistant", "content": response}
        messages = self.template.messages(prompt)
        full = self._chat([*messages, answer])
        if full.startswith(prompt_text):
            return full[len(prompt_text) :]
        # Mistral v0.3's template puts the system prompt only into a final user turn, so the chat
        # with the answer attached drops it. The answer's framing (leading space, EOS) is the same
        # without a system prompt, so take it from there.
        bare_prompt = self._chat(messages[1:], add_generation_prompt=True)
        bare_full = self._chat([*messages[1:], answer])
        return bare_full[len(bare_prompt) :] if bare_full.startswith(bare_prompt) else response

    def render(self, example: Example) -> tuple[list[int], list[int]]:
        """(prompt ids, completion ids): exactly one BOS first, EOS last, loss on the completion only.

        The prompt is tokenized exactly as serving sends it. The answer is tokenized in context,
        after the prompt, because that is how the model produces it (a leading space joins the
        answer's first token); only where the two do not line up is it tokenized on its own.
        """
        return self.render_many([example])[0]

    def render_many(self, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
        """``render`` of each example, with one batched tokenizer call for them all."""
        texts: list[str] = []
        answers: list[str | None] = []
        for example in examples:
            if example.text is not None:
                texts.append(example.text)
                answers.append(None)
                continue
            assert example.prompt is not None and example.response is not None
            prompt_text = self.serving_prompt(example.prompt)
            answer = self._answer_framing(example.prompt, example.response, prompt_text)
            texts.extend((prompt_text, prompt_text + answer))
            answers.append(answer)
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        out: list[tuple[list[int], list[int]]] = []
        position = 0
        for answer in answers:
            if answer is None:
                out.append(([], self._with_eos(self._with_one_bos(encoded[position]))))
                position += 1
                continue
            prompt_ids, joint = encoded[position], encoded[position + 1]
            position += 2
            ok = joint[: len(prompt_ids)] == prompt_ids
            completion_ids = joint[len(prompt_ids) :] if ok else self._ids(answer)
            out.append((self._with_one_bos(prompt_ids), self._with_eos(completion_ids)))
        return out


def fit(prompt: list[int], completion: list[int], max_length: int, overlong: str) -> list[int] | None:
    """The prompt to keep for a row over ``max_length`` tokens (left-truncated), or None to drop the row."""
    if len(prompt) + len(completion) <= max_length:
        return prompt
    room = max_length - len(completion)
    if overlong == "drop" or not prompt or room < 2:
        return None
    # Keep BOS, drop the oldest prompt tokens: the end of the prompt is what the answer follows.
    return [prompt[0], *prompt[len(prompt) - room + 1 :]]


def too_long(where: str, prompt: list[int], completion: list[int], max_length: int) -> str:
    return f"{where}: {len(prompt) + len(completion)} tokens > {max_length}"


def no_rows_fit(max_length: int) -> DataError:
    return DataError(f"every row is longer than max_seq_length={max_length} tokens")


def percentile(values: list[int], q: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
