"""``jnreg eval``, the promotion gate, ``--against`` and ``jnreg export`` on the built-in tiny model."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.core.evaluation.gate import parse_requirement, parse_requirements, shortfalls
from jnreg.core.host.plugins import Host, reset_host
from jnreg.errors import ConfigError
from jnreg.registry import ModelStore
from jnreg.schemas import errors as schema_errors
from tests.helpers import AGENT, DEFAULT_REQUIREMENT, QuickFactChecker, heavy_imports_after, quick_spec

TINY = "jnreg:tiny-mistral"
pytestmark = pytest.mark.usefixtures("quick_host")


def jnreg(*args: str):
    done = CliRunner().invoke(cli, list(args))
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`train --publish` with the plugin's default requirement: trained, stored as v1, kept out of service."""
    work = tmp_path_factory.mktemp("evalgate")
    root, output = work / "store", work / "adapter"
    settings = work / "fast.json"  # one eval batch of all 4 held-out rows: training's eval loss is then per token
    settings.write_text(json.dumps({"eval_batch_size": 4}))
    host = Host(autoload=False)
    host.register(QuickFactChecker(), name="quick_fact_checker")
    previous = reset_host(host)
    try:
        done = jnreg(
            "--store-root", str(root), "train", AGENT, "--model_name_or_path", TINY, "--output-dir", str(output),
            "--max-train-samples", "8", "--eval-fraction", "0.5", "--epochs", "1", "--train-batch-size", "4",
            "--config", str(settings), "--gradient-accumulation", "1", "--learning-rate", "3e-3",
            "--publish", "--adapter-version", "v1",
        )  # fmt: skip
    finally:
        reset_host(previous)
    return root, output, done


def store_of(trained) -> ModelStore:
    return ModelStore(trained[0])


def copy_adapter(trained, target: Path, *, eval_rows: bool = True, random_b: bool = False) -> Path:
    """The trained adapter directory (no checkpoints), optionally without its eval rows or with a random B."""
    shutil.copytree(trained[1], target, ignore=shutil.ignore_patterns("checkpoint-*"))
    if not eval_rows:
        (target / "eval_rows.jsonl").unlink()
    if random_b:  # a few training steps barely move B from zero; this adapter changes the answers for sure
        import torch
        from safetensors.torch import load_file, save_file

        generator = torch.Generator().manual_seed(0)
        weights = load_file(target / "adapter_model.safetensors")
        weights = {
            k: torch.randn(v.shape, generator=generator, dtype=v.dtype) * 0.1 if "lora_B" in k else v
            for k, v in weights.items()
        }
        save_file(weights, target / "adapter_model.safetensors")
    return target


# Requirements ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("schema_valid=>0.9", "malformed requirement"),
        ("schema_valid>=", "malformed requirement"),
        ("schema_valid>=high", "malformed requirement"),
        ("bleu>=0.3", "unknown metric 'bleu'"),
        ("exact_match.mood>=0.5", "the response has no field 'mood'"),
    ],
)
def test_bad_requirements_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_requirements([text], quick_spec().response_schema)


def test_requirements_compare_and_explain_the_numbers():
    requirements = parse_requirements(
        ["schema_valid>=0.95", "eval_loss<2.5", "exact_match.verdict>=0.5"], quick_spec().response_schema
    )
    metrics = {"schema_valid": 0.5, "eval_loss": 2.0, "exact_match.verdict": None}
    assert shortfalls(requirements, metrics) == [
        "schema_valid 0.5 (required >= 0.95)",
        "exact_match.verdict not reported (required >= 0.5)",
    ]
    assert shortfalls(requirements[:2], {"schema_valid": 0.95, "eval_loss": 2.4999}) == []
    assert str(parse_requirement(" json_rate >= 1 ")) == "json_rate>=1"


def test_a_plugin_default_requirement_is_checked_when_registered():
    with pytest.raises(ConfigError, match="agent 'fact_checker': unknown metric 'accuracy'"):
        dataclasses.replace(quick_spec(), requirements=("accuracy>=0.9",))
    shown = json.loads(jnreg("agents", "show", AGENT, "--json").stdout)
    assert shown["requirements"] == [DEFAULT_REQUIREMENT]
    assert f"promotion requirements: {DEFAULT_REQUIREMENT}" in jnreg("agents", "show", AGENT).stdout


def test_train_checks_require_before_training(tmp_path):
    done = jnreg("train", AGENT, "--model_name_or_path", TINY, "--require", "schema_valid>=0.9")
    assert done.exit_code == 1 and "--require gates publishing: add --publish" in done.output
    done = jnreg("--store-root", str(tmp_path / "store"), "train", AGENT, "--model_name_or_path", TINY,
                 "--output-dir", str(tmp_path / "out"), "--publish", "--require", "bleu>=0.3")  # fmt: skip
    assert done.exit_code == 1 and "unknown metric 'bleu'" in done.output and done.output.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "argv", [["eval", "--help"], ["export", "--help"], ["store", "promote", "--help"], ["store", "show", "--help"]]
)
def test_new_commands_import_no_heavy_library_until_they_run(argv):
    assert heavy_imports_after(argv) == []


# Training records its held-out rows; the gate keeps a failing version out of service -------------------


def test_train_publish_records_eval_rows_and_the_plugin_default_gate_keeps_it_out_of_service(trained):
    root, output, done = trained
    assert done.exit_code == 1
    message = done.output.strip().splitlines()[-1]
    assert message.startswith("Error: published fact_checker v1 but did not put it in service: schema_valid 0 ")
    assert "(required >= 0.5)" in message
    store = ModelStore(root)
    assert store.version_labels(AGENT) == ["v1"] and store.current(AGENT) is None
    # The held-out split went with the adapter into the version, checksummed like its other files.
    summary = json.loads((output / "training_summary.json").read_text())
    published = store.version_dir(AGENT, "v1") / "eval_rows.jsonl"
    rows = [json.loads(line) for line in published.read_text().splitlines()]
    assert len(rows) == summary["dataset"]["eval_rows"] == 4
    assert "eval_rows.jsonl" in {f["path"] for f in store.manifest(AGENT, "v1")["files"]}
    assert store.verify(AGENT).ok
    # The gate evaluated it; the held-out loss is the one training reported (one eval batch of 4 rows).
    (evaluation,) = store.evaluations(AGENT, "v1")
    assert evaluation["rows_source"]["kind"] == "recorded" and evaluation["metrics"]["rows"] == 4
    assert evaluation["metrics"]["eval_loss"] == pytest.approx(summary["metrics"]["eval_loss"], abs=2e-3)


def test_eval_records_results_beside_the_version_without_changing_it(trained):
    root = trained[0]
    store = ModelStore(root)
    digest = store.manifest(AGENT, "v1")["digest"]
    done = jnreg("--store-root", str(root), "eval", AGENT, "--version", "v1", "--limit", "2", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    evaluation = result["evaluation"]
    metrics = evaluation["metrics"]
    assert metrics["rows"] == 2 and evaluation["settings"]["limit"] == 2
    assert evaluation["settings"] == {
        "max_new_tokens": 6, "temperature": 0.0, "seed": 0, "limit": 2, "quantization": "nf4"
    }  # fmt: skip
    assert metrics["eval_loss"] > 0 and metrics["tokens_per_second"] > 0
    assert {"json_rate", "schema_valid", "exact_match", "exact_match.verdict", "exact_match.confidence"} <= set(metrics)
    rows = [json.loads(line) for line in Path(result["rows_path"]).read_text().splitlines()]
    assert len(rows) == 2 and all(schema_errors("eval_row", row) == [] for row in rows)
    assert all(row["prompt"] and row["reference"] and row["answer"] is not None for row in rows)
    assert set(rows[0]["exact_match"]) == {"verdict", "confidence", "score", "evidence_needed"}
    # The per-row verdicts add up to the metrics.
    assert metrics["json_rate"] == sum(r["json"] for r in rows) / 2
    assert metrics["exact_match.verdict"] == sum(r["exact_match"]["verdict"] for r in rows) / 2
    record = store.evaluations_dir(AGENT, "v1") / f"{evaluation['id']}.json"
    assert schema_errors("evaluation", json.loads(record.read_text())) == []
    # The version's page beside it now shows this evaluation.
    page = root / AGENT / "reports" / "v1.html"
    assert evaluation["id"] in page.read_text() and store.read_report(AGENT, "v1") == page.read_bytes()
    # The version is untouched and verify still passes; show and list carry the results.
    assert store.manifest(AGENT, "v1")["digest"] == digest and store.check_files(AGENT, "v1") == []
    shown = json.loads(jnreg("--store-root", str(root), "store", "show", AGENT, "v1", "--json").stdout)
    assert evaluation["id"] in [e["id"] for e in shown["evaluations"]]
    text = jnreg("--store-root", str(root), "store", "show", AGENT, "v1").stdout
    assert evaluation["id"] in text and "schema_valid=" in text
    listed = json.loads(jnreg("--store-root", str(root), "store", "list", AGENT, "--json").stdout)
    assert listed["versions"][0]["evaluation"]["id"] == evaluation["id"]
    assert listed["versions"][0]["evaluation"]["metrics"] == metrics


def test_eval_rows_whose_references_fail_the_schema_are_refused(trained, tmp_path):
    rows = tmp_path / "rows.jsonl"
    good = {"prompt": "Claim: it rained.", "response": json.dumps({"verdict": "unclear", "confidence": 0.5,
            "score": 0.5, "rationale": "No record.", "evidence_needed": "yes"})}  # fmt: skip
    bad = {"prompt": "Claim: it snowed.", "response": json.dumps({"verdict": "maybe", "confidence": 0.5})}
    rows.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    before = ModelStore(trained[0]).evaluations(AGENT, "v1")
    done = jnreg("--store-root", str(trained[0]), "eval", AGENT, "--version", "v1", "--eval-files", str(rows))
    assert done.exit_code == 1
    assert done.output.count("\n") == 1 and f"eval row {rows}:2: response fails the agent's schema" in done.output
    assert ModelStore(trained[0]).evaluations(AGENT, "v1") == before


def test_eval_of_a_missing_version_or_one_without_eval_rows_says_so(trained, tmp_path):
    root = trained[0]
    current = ModelStore(root).current(AGENT)
    done = jnreg("--store-root", str(root), "eval", AGENT, "--version", "v9")
    assert done.exit_code == 1 and "has no version 'v9'" in done.output and done.output.count("\n") == 1
    source = copy_adapter(trained, tmp_path / "no_rows", eval_rows=False)
    ModelStore(root).publish(AGENT, source, version="v2", promote=False)
    done = jnreg("--store-root", str(root), "eval", AGENT, "--version", "v2")
    assert done.exit_code == 1 and "v2 has no eval rows recorded with it" in done.output
    # Gating on it cannot be checked, so it stays out of service.
    done = jnreg("--store-root", str(root), "store", "promote", AGENT, "v2", "--require", "rows>=1")
    assert done.exit_code == 1 and "fact_checker v2 not put in service:" in done.output
    assert ModelStore(root).current(AGENT) == current


def test_promote_gate_refuses_bad_requirements_and_uses_recorded_results(trained):
    root = trained[0]
    store = ModelStore(root)
    for bad, message in (("schema_valid=>0.9", "malformed requirement"), ("bleu>=0.3", "unknown metric 'bleu'")):
        done = jnreg("--store-root", str(root), "store", "promote", AGENT, "v1", "--require", bad)
        assert done.exit_code == 1 and message in done.output and done.output.count("\n") == 1
    done = jnreg("--store-root", str(root), "store", "promote", AGENT, "v9", "--require", "rows>=1")
    assert done.exit_code == 1 and "has no version 'v9'" in done.output
    done = jnreg("--store-root", str(root), "store", "publish", AGENT, str(trained[1]), "--no-promote",
                 "--require", "rows>=1")  # fmt: skip
    assert done.exit_code == 1 and "no use with --no-promote" in done.output
    # Without --require the plugin's default applies, and v1 falls short of it.
    done = jnreg("--store-root", str(root), "store", "promote", AGENT, "v1")
    assert done.exit_code == 1 and "schema_valid 0 (required >= 0.5)" in done.output
    assert store.current(AGENT) is None
    evaluations = len(store.evaluations(AGENT, "v1"))
    done = jnreg("--store-root", str(root), "store", "promote", AGENT, "v1", "--require", "rows>=1",
                 "--require", "eval_loss<=100")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "against evaluation" in done.output and store.current(AGENT) == "v1"
    assert len(store.evaluations(AGENT, "v1")) == evaluations  # recorded results were used, not recomputed


def test_publish_gate_evaluates_a_version_with_no_results_first(trained, tmp_path):
    root = trained[0]
    store = ModelStore(root)
    source = copy_adapter(trained, tmp_path / "again")
    current = store.current(AGENT)
    done = jnreg("--store-root", str(root), "store", "publish", AGENT, str(source), "--adapter-version", "v3",
                 "--require", "json_rate>=0.5")  # fmt: skip
    assert done.exit_code == 1
    assert "published fact_checker v3 but did not put it in service: json_rate 0 (required >= 0.5)" in done.output
    assert "v3" in store.version_labels(AGENT) and store.current(AGENT) == current
    assert len(store.evaluations(AGENT, "v3")) == 1
    done = jnreg("--store-root", str(root), "store", "publish", AGENT, str(source), "--adapter-version", "v4",
                 "--require", "rows>=4", "--json")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["promoted"] is True and store.current(AGENT) == "v4"
    assert store.evaluations(AGENT, "v4")[0]["metrics"]["rows"] == 4


def test_the_gate_counts_only_an_evaluation_of_every_recorded_row(trained, tmp_path):
    root = tmp_path / "store"  # a copy: this test changes which version is in service
    shutil.copytree(trained[0], root, symlinks=True)
    store = ModelStore(root)
    source = copy_adapter(trained, tmp_path / "partial")
    done = jnreg("--store-root", str(root), "store", "publish", AGENT, str(source), "--adapter-version", "v5",
                 "--no-promote")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert jnreg("--store-root", str(root), "eval", AGENT, "--version", "v5", "--limit", "1").exit_code == 0
    assert [e["metrics"]["rows"] for e in store.evaluations(AGENT, "v5")] == [1]
    # One row says too little: the gate evaluates every recorded row before putting v5 in service.
    done = jnreg("--store-root", str(root), "store", "promote", AGENT, "v5", "--require", "rows>=4")
    assert done.exit_code == 0, done.output
    assert "has no evaluation of all its recorded eval rows yet" in done.output
    assert store.current(AGENT) == "v5"
    assert [e["metrics"]["rows"] for e in store.evaluations(AGENT, "v5")] == [1, 4]


def test_eval_gate_and_export_work_on_an_object_store(trained, tmp_path, s3_env):
    import urllib.request
    import uuid

    bucket = f"jnreg-{uuid.uuid4().hex[:16]}"
    urllib.request.urlopen(urllib.request.Request(f"{s3_env}/{bucket}", method="PUT"), timeout=10).read()
    root = f"s3://{bucket}/store"
    source = copy_adapter(trained, tmp_path / "adapter")
    done = jnreg("--store-root", root, "store", "publish", AGENT, str(source), "--adapter-version", "v1",
                 "--no-promote")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert ModelStore(root).report_location(AGENT, "v1") == f"s3://{bucket}/store/{AGENT}/reports/v1.html"
    assert b"Not evaluated yet" in ModelStore(root).read_report(AGENT, "v1")  # publish wrote the page
    done = jnreg("--store-root", root, "eval", AGENT, "--version", "v1", "--limit", "1", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["rows_path"].startswith(f"s3://{bucket}/store/{AGENT}/evaluations/v1/")
    assert result["evaluation"]["id"].encode() in ModelStore(root).read_report(AGENT, "v1")
    assert result["evaluation"]["rows_source"]["kind"] == "recorded"
    done = jnreg("--store-root", root, "store", "promote", AGENT, "v1", "--require", "rows>=4")
    assert done.exit_code == 0, done.output
    store = ModelStore(root)
    assert store.current(AGENT) == "v1" and [e["metrics"]["rows"] for e in store.evaluations(AGENT, "v1")] == [1, 4]
    done = jnreg("--store-root", root, "export", AGENT, "--merged", str(tmp_path / "merged"), "--dtype", "fp32")
    assert done.exit_code == 0, done.output
    assert (tmp_path / "merged" / "config.json").is_file()


def test_against_prints_both_versions_and_the_rows_that_differ(trained, tmp_path):
    root = trained[0]
    store = ModelStore(root)
    store.publish(AGENT, copy_adapter(trained, tmp_path / "loud", random_b=True), version="v5", promote=False)
    store.promote(AGENT, "v1")
    done = jnreg("--store-root", str(root), "eval", AGENT, "--version", "v5", "--against", "current",
                 "--limit", "2", "--json")  # fmt: skip
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["a"]["version"] == "v5" and result["b"]["version"] == "v1"
    assert result["a"]["rows_source"]["sha256"] == result["b"]["rows_source"]["sha256"]
    assert result["differing_rows"], "an adapter with a random B answers differently"
    for row in result["differing_rows"]:
        assert row["a"] != row["b"]
    text = jnreg("--store-root", str(root), "eval", AGENT, "--version", "v1", "--against", "v1", "--limit", "1").stdout
    assert "v1" in text and "schema_valid" in text and "0 of 1 row(s) differ" in text


def test_interrupted_eval_leaves_nothing_half_written(trained):
    root = trained[0]
    store = ModelStore(root)
    before = sorted(os.listdir(store.evaluations_dir(AGENT, "v1")))
    code = (
        "import sys\n"
        "from jnreg.core.host.plugins import Host, reset_host\n"
        "from tests.helpers import QuickFactChecker\n"
        "host = Host(autoload=False)\n"
        "host.register(QuickFactChecker(), name='quick')\n"
        "reset_host(host)\n"
        "from jnreg.cli import cli\n"
        f"cli(['--store-root', {str(root)!r}, 'eval', 'fact_checker', '--version', 'v1', '--max-new-tokens', '200'])\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    seen = b""
    deadline = time.monotonic() + 120
    while b"eval fact_checker" not in seen and time.monotonic() < deadline:
        chunk = process.stderr.read1(4096)
        if not chunk:
            break
        seen += chunk
    assert b"eval fact_checker" in seen, seen.decode(errors="replace")[-2000:]
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode(errors="replace")[-2000:]
    assert sorted(os.listdir(store.evaluations_dir(AGENT, "v1"))) == before


# Export -----------------------------------------------------------------------------------------------


def test_export_merges_into_the_dequantized_base_and_matches_the_adapter_on_its_base(trained, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jnreg.core.models.loading import load_base_model
    from jnreg.registry import load

    root = trained[0]
    store = ModelStore(root)
    if "v5" not in store.version_labels(AGENT):
        store.publish(AGENT, copy_adapter(trained, tmp_path / "loud", random_b=True), version="v5", promote=False)
    target = tmp_path / "merged"
    done = jnreg("--store-root", str(root), "export", AGENT, "v5", "--merged", str(target), "--dtype", "fp32")
    assert done.exit_code == 0, done.output
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    card = (target / "README.md").read_text()
    assert TINY in card and "v5" in card and store.manifest(AGENT, "v5")["digest"] in card
    assert not (target / "adapter_config.json").exists()

    tokenizer = AutoTokenizer.from_pretrained(target)
    ids = tokenizer("Claim: The Harwick council voted to close the Elm Street library.", return_tensors="pt").input_ids
    merged = AutoModelForCausalLM.from_pretrained(target)
    served, _ = load(AGENT, "v5", store_root=root)  # the adapter on its NF4 base, as serving runs it
    unmerged_base = load_base_model(TINY, "nf4").dequantize()  # the same dequantized weights, adapter kept apart
    unmerged = PeftModel.from_pretrained(unmerged_base, str(store.version_dir(AGENT, "v5"))).eval()
    with torch.no_grad():
        got = merged(ids).logits
        apart = unmerged(ids).logits
        expected = served(ids).logits
        with served.disable_adapter():
            base = served(ids).logits
    effect = (expected - base).abs().max().item()
    # Against the adapter on the same dequantized weights, only the order of fp32 sums differs
    # (x·(W+sBA)ᵀ against x·Wᵀ + s·(x·Aᵀ)·Bᵀ): fp32 rounding (eps 1.2e-7) through two 128-wide layers
    # gives ~1e-6 on logits of size ~1, so 1e-4 holds with margin.
    assert (got - apart).abs().max().item() < 1e-4
    # Against serving's NF4 path: bitsandbytes' CPU 4-bit kernel rounds its inputs to bf16 (8 significant
    # bits, relative error up to 2^-9 per matmul), so the two agree to bf16 precision, 1% of the logits'
    # size, not fp32's; still ten times finer than what the adapter changes.
    tolerance = 1e-2 * expected.abs().max().item()
    assert (got - expected).abs().max().item() < tolerance < effect / 10

    # bf16 (8 significant bits) rounds every weight and activation: noise that stays well below the
    # adapter's systematic change of the same logits.
    bf16 = tmp_path / "merged-bf16"
    assert jnreg("--store-root", str(root), "export", AGENT, "v5", "--merged", str(bf16)).exit_code == 0
    half = AutoModelForCausalLM.from_pretrained(bf16)
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    with torch.no_grad():
        rough = half(ids).logits.float()
    rounding, adapter = (rough - apart).abs().mean().item(), (base - apart).abs().mean().item()
    assert rounding < adapter / 3, (rounding, adapter)


def test_export_refuses_an_existing_directory(trained, tmp_path):
    target = tmp_path / "exists"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    done = jnreg("--store-root", str(trained[0]), "export", AGENT, "v1", "--merged", str(target))
    assert done.exit_code == 1 and "already exists" in done.output and done.output.count("\n") == 1
    assert os.listdir(target) == ["keep.txt"]
    done = jnreg("--store-root", str(trained[0]), "export", AGENT, "v9", "--merged", str(tmp_path / "new"))
    assert done.exit_code == 1 and "has no version 'v9'" in done.output and not (tmp_path / "new").exists()
