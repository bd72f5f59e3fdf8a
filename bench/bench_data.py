"""The data step of a run on news-like rows: a first run, the run after it (cache hit), and peak memory as rows grow.

The rows are generated here, deterministically: synthesizer prompts of two to five news
snippets (about 3.3 KB a row, so 20,000 rows make about 66 MB of JSONL) with schema-valid
JSON responses. Each measurement runs in its own process: the data step of ``jnreg train
--dry-run`` (check every row, split, tokenize or find the tokenized rows, the data report) on
the built-in tiny model's tokenizer, timed around that step, and that process's peak RSS.
The alternative is the list pipeline jnreg used before: every row in a Python list, tokenized
in one process, every run, then ``Dataset.from_list`` for the trainer.

    python bench/bench_data.py [--rows 20000] [--scale-rows 200000] [--quick] [--out PATH]
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
AGENT = "synthesizer"
MB = 1_000_000

PLACES = ["Harwick", "Milbrook", "Eastford", "Caddon Vale", "Port Ellery", "Northam", "Brayfield", "Kestle"]
BODIES = ["council", "school board", "health trust", "transport office", "water authority", "police service"]
TOPICS = [
    "library branch",
    "bus route",
    "bridge repairs",
    "housing plan",
    "clinic hours",
    "flood defences",
    "recycling contract",
    "market square",
    "cycle lanes",
    "youth centre",
]
PEOPLE = ["June Parrish", "Owen Pryce", "Amara Okafor", "Lena Voss", "Tom Hadley", "Priya Nair", "Sam Whitlock"]
VERBS = ["voted", "agreed", "decided", "announced plans", "confirmed", "postponed a decision"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def sentence(rng: random.Random) -> str:
    place, body, topic = rng.choice(PLACES), rng.choice(BODIES), rng.choice(TOPICS)
    kind = rng.randrange(4)
    if kind == 0:
        return (
            f"The {place} {body} {rng.choice(VERBS)} on the {topic} on {rng.choice(DAYS)}, by "
            f"{rng.randint(3, 9)} votes to {rng.randint(0, 4)}, after a meeting that ran past {rng.randint(8, 11)} pm."
        )
    if kind == 1:
        return (
            f'"We have listened to residents and the {topic} will be reviewed again in {rng.randint(2, 18)} '
            f"months,\" said {rng.choice(PEOPLE)}, who chairs the {body}'s finance committee."
        )
    if kind == 2:
        return (
            f"Figures from the {body} show costs of {rng.randint(20, 900)},000 a year, up {rng.randint(2, 60)}% "
            f"since {rng.randint(2012, 2024)}, while use of the {topic} fell by {rng.randint(5, 45)}%."
        )
    return (
        f"Campaigners in {place} said the change to the {topic} would hit older residents and families "
        f"without cars hardest, and a petition has gathered {rng.randint(200, 9000)} signatures."
    )


def news_row(rng: random.Random) -> dict[str, str]:
    snippets = [" ".join(sentence(rng) for _ in range(rng.randint(2, 7))) for _ in range(rng.choice([2, 3, 3, 4, 5]))]
    lead = snippets[0].split(". ")
    answer = {
        "summary": ". ".join(lead[:3])[:600],
        "narrative_voice": "Neutral local news report, third person.",
        "key_points": [s[:160] for s in lead[: rng.randint(1, 5)]],
        "cautions": [s[:120] for s in snippets[-1].split(". ")[: rng.randint(0, 2)]],
        "pull_quotes": [],
    }
    return {"prompt": "\n---\n".join(snippets), "response": json.dumps(answer)}


def write_rows(path: Path, rows: int, seed: int = 8) -> int:
    """``rows`` news-like rows as JSONL, the same every time; the file's size in bytes."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            out.write(json.dumps(news_row(rng)) + "\n")
    return path.stat().st_size


# ---------------------------------------------------------------- the measured process


def child(mode: str, data_file: str) -> None:
    """One data step in this process (``jnreg`` or ``lists``), or none (``setup``); prints what it saw."""
    import warnings

    warnings.filterwarnings("ignore")
    from jnreg.core.host.plugins import get_host
    from jnreg.core.models.loading import load_tokenizer
    from jnreg.core.training.config import build_config

    agent = get_host().get(AGENT)
    with tempfile.TemporaryDirectory() as out:
        values = {"base_model": "jnreg:tiny-mistral", "output_dir": out, "train_files": [data_file]}
        config = build_config(agent.spec, {}, values)
        tokenizer = load_tokenizer(config.base_model)
        start = time.perf_counter()
        if mode == "jnreg":
            from jnreg.core.data.prepare import marked_example, prepare_data

            prepared = prepare_data(config, agent, tokenizer)
            stats = prepared.stats()
            marked_example(prepared)
            rows = len(prepared.train.dataset)
            hit = prepared.cache_hit
        elif mode == "lists":
            stats, rows = _list_pipeline(config, agent, tokenizer)
            hit = False
        else:
            stats, rows, hit = {}, 0, False
        seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "data_s": seconds,
                "rows": rows,
                "cache_hit": hit,
                "tokens": stats.get("prompt_tokens", 0) + stats.get("response_tokens", 0),
            }
        )
    )


def _list_pipeline(config, agent, tokenizer) -> tuple[dict, int]:
    """The data step as jnreg ran it before the Arrow cache: lists, one process, every run."""
    from datasets import Dataset

    from jnreg.core.data import rows as data

    spec = agent.spec
    checked = data.check_records(
        data.load_records(spec, config.data_options, agent.plugin),
        config.data_options,
        spec,
        on_bad_row=config.on_bad_row,
    )
    held = data.held_out(len(checked.examples), config.eval_fraction, config.seed)
    renderer = data.Renderer(tokenizer, spec.template, config.prompt_template)
    splits: dict[bool, list[dict[str, list[int]]]] = {False: [], True: []}
    prompt_tokens = response_tokens = 0
    first = None
    for index, example in enumerate(checked.examples):
        prompt, completion = renderer.render(example)
        kept = data.fit(prompt, completion, config.max_seq_length, config.overlong)
        if kept is None:
            continue
        splits[index in held].append(
            {"input_ids": kept + completion, "completion_mask": [0] * len(kept) + [1] * len(completion)}
        )
        if index not in held:
            first = first or example
            prompt_tokens += len(kept)
            response_tokens += len(completion)
    stats = {
        "prompt_tokens": prompt_tokens,
        "response_tokens": response_tokens,
        "length_p95": data.percentile([len(r["input_ids"]) for r in splits[False]], 95),
        "sha256": checked.sha256,
    }
    dataset = Dataset.from_list(splits[False])
    Dataset.from_list(splits[True])
    renderer.render(first)
    return stats, len(dataset)


def measure(mode: str, data_file: Path, cache: Path) -> dict:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        JNREG_DATA_CACHE=str(cache),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    run = benchlib.run_child([sys.executable, __file__, "--child", mode, "--data", str(data_file)], env=env)
    seen = json.loads(run["stdout"].strip().splitlines()[-1])
    return {**seen, "wall_s": round(run["wall_s"], 3), "peak_rss_mb": round(run["peak_rss_bytes"] / MB, 1)}


def main() -> None:
    parser = benchlib.parser(__file__, __doc__)
    parser.add_argument("--rows", type=int, default=None, help="rows for the first/second run (default 20000)")
    parser.add_argument("--scale-rows", type=int, default=None, help="rows for the memory-growth run (200000)")
    parser.add_argument("--child", choices=["jnreg", "lists", "setup"], help=argparse_hidden())
    parser.add_argument("--data", help=argparse_hidden())
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data)
        return
    rows = args.rows or (2_000 if args.quick else 20_000)
    scale_rows = args.scale_rows or 10 * rows
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="jnreg-bench-data-") as work:
        root = Path(work)
        small, large = root / f"news-{rows}.jsonl", root / f"news-{scale_rows}.jsonl"
        sizes = {rows: write_rows(small, rows), scale_rows: write_rows(large, scale_rows)}
        runs["setup"] = measure("setup", small, root / "cache")  # builds the tiny model once; imports alone
        runs["lists"] = measure("lists", small, root / "unused")
        runs["first"] = measure("jnreg", small, root / "cache")
        runs["second"] = measure("jnreg", small, root / "cache")
        runs["scale_first"] = measure("jnreg", large, root / "cache-scale")
        runs["scale_second"] = measure("jnreg", large, root / "cache-scale")
    assert not runs["first"]["cache_hit"] and runs["second"]["cache_hit"] and runs["scale_second"]["cache_hit"]
    first, second, lists = runs["first"], runs["second"], runs["lists"]
    scale_first, scale_second = runs["scale_first"], runs["scale_second"]
    budget = 700.0
    flat = scale_first["peak_rss_mb"] <= 1.1 * first["peak_rss_mb"]
    figures = [
        benchlib.figure(
            f"data step, run after a first one (cache hit), {rows} rows",
            second["data_s"],
            "s",
            better="lower",
            alternative="the first run (tokenizes)",
            alternative_value=first["data_s"],
            target="≤ 0.25× the first run",
            met=second["data_s"] <= 0.25 * first["data_s"],
        ),
        benchlib.figure(
            f"data step, first run, {rows} rows",
            first["data_s"],
            "s",
            better="lower",
            alternative="list pipeline (one process, Python lists, Dataset.from_list)",
            alternative_value=lists["data_s"],
        ),
        benchlib.figure(
            f"peak RSS, first run, {rows} rows",
            first["peak_rss_mb"],
            "MB",
            better="lower",
            alternative="list pipeline",
            alternative_value=lists["peak_rss_mb"],
            target=f"≤ {budget:.0f} MB",
            met=first["peak_rss_mb"] <= budget,
        ),
        benchlib.figure(
            f"peak RSS, cache hit, {rows} rows",
            second["peak_rss_mb"],
            "MB",
            better="lower",
            alternative="list pipeline",
            alternative_value=lists["peak_rss_mb"],
            target=f"≤ {budget:.0f} MB",
            met=second["peak_rss_mb"] <= budget,
        ),
        benchlib.figure(
            f"peak RSS, first run, {scale_rows} rows",
            scale_first["peak_rss_mb"],
            "MB",
            better="lower",
            alternative=f"jnreg first run, {rows} rows",
            alternative_value=first["peak_rss_mb"],
            target=f"flat: ≤ 1.1× the {rows}-row peak, ≤ {budget:.0f} MB",
            met=flat and scale_first["peak_rss_mb"] <= budget,
        ),
        benchlib.figure(
            f"data step, cache hit, {scale_rows} rows",
            scale_second["data_s"],
            "s",
            better="lower",
            alternative="the first run (tokenizes)",
            alternative_value=scale_first["data_s"],
            target="≤ 0.25× the first run",
            met=scale_second["data_s"] <= 0.25 * scale_first["data_s"],
        ),
    ]
    benchlib.write(
        __file__,
        args.out,
        figures,
        settings={
            "agent": AGENT,
            "tokenizer": "jnreg:tiny-mistral",
            "rows": rows,
            "scale_rows": scale_rows,
            "jsonl_bytes": sizes,
            "tokens": {rows: first["tokens"], scale_rows: scale_first["tokens"]},
            "data_workers": os.environ.get("JNREG_DATA_WORKERS", "one per core"),
        },
        runs=runs,
        note="peak RSS is the whole process's (Python, torch and transformers imported, the tokenizer loaded): "
        f"{runs['setup']['peak_rss_mb']} MB with no data step at all",
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
