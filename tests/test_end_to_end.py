"""The README's main job, end to end: train on the built-in model, publish, resolve, load, generate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from tests.helpers import run_jnreg

TINY = "jnreg:tiny-mistral"


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """The store after the README's main-job command, run through the real console script."""
    work = tmp_path_factory.mktemp("mainjob")
    root = work / "model_store"
    done = run_jnreg(
        "--store-root", str(root), "train", "synthesizer", "--model_name_or_path", TINY, "--publish", cwd=work
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step " in done.stdout and "loss" in done.stdout, "no periodic loss lines"
    assert "\r" not in done.stdout + done.stderr and "\x1b" not in done.stdout + done.stderr
    assert "published synthesizer v" in done.stdout
    # The quick start uses the built-in model's own settings, says so, and visibly learns.
    assert "note: jnreg:tiny-mistral is the built-in demo model" in done.stdout
    before, after = map(float, re.search(r"eval loss (\d+\.\d+) -> (\d+\.\d+)", done.stdout).groups())
    assert after <= 0.9 * before, (before, after)
    return root


def test_main_job_publishes_a_resolvable_adapter(published):
    done = run_jnreg("--store-root", str(published), "store", "resolve", "synthesizer", "--json")
    assert done.returncode == 0, done.stderr
    resolution = json.loads(done.stdout)
    adapter = Path(resolution["adapter_path"])
    assert adapter.is_absolute() and (adapter / "adapter_model.safetensors").is_file()
    assert resolution["base_model"] == TINY
    stored_summary = json.loads((adapter / "training_summary.json").read_text())
    assert stored_summary["adapter_version"] == resolution["version"]
    assert not list(adapter.glob("checkpoint-*")) and not (adapter / "training_args.bin").exists()


def test_existing_justnews_loader_path_loads_with_plain_peft_and_changes_outputs(published):
    import torch
    from peft import PeftModel

    from jnreg.core.models.loading import load_base_model, load_tokenizer

    # What the JustNews loader does: first entry, store root + adapter_model_store_path, base_ref -> hf_id.
    agent_map = json.loads((published / "AGENT_MODEL_MAP.json").read_text())
    entry = agent_map["agents"]["synthesizer"][0]
    adapter_dir = published / entry["adapter_model_store_path"]
    base_id = agent_map["base_models"][entry["base_ref"]]["hf_id"]
    assert base_id == TINY and entry["adapter_name"] == "mistral_synth_v1"

    tokenizer = load_tokenizer(str(adapter_dir))
    inputs = tokenizer("Harwick council voted to close the library.", return_tensors="pt")
    base = load_base_model(base_id, "nf4")
    base.eval()
    with torch.no_grad():
        before = base(**inputs).logits.clone()
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    with torch.no_grad():
        after = model(**inputs).logits
    assert (after - before).abs().max().item() > 1e-5


def test_registry_load_checks_and_returns_peft_model(published):
    from peft import PeftModel

    from jnreg.registry import load, resolve

    resolution = resolve("synthesizer", store_root=published)
    model, tokenizer = load("synthesizer", store_root=published)
    assert isinstance(model, PeftModel)
    assert tokenizer.eos_token_id is not None
    assert resolution.version in str(resolution.adapter_path)


def test_generate_answers_through_the_serving_template(published, builtin_agents):
    done = CliRunner().invoke(
        cli,
        ["--store-root", str(published), "generate", "synthesizer", "A storm hit Kelsey Bay.", "--json",
         "--max-new-tokens", "8"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["agent"] == "synthesizer" and result["version"].startswith("v")
    assert 0 < result["new_tokens"] <= 8 and isinstance(result["text"], str)
    assert result["prompt_tokens"] > 20  # the system prompt went in


def test_main_job_ends_with_the_version_page(published, tmp_path):
    """The quick start's last step: the page of the version it published, beside it and where --out says."""
    resolution = json.loads(
        run_jnreg("--store-root", str(published), "store", "resolve", "synthesizer", "--json").stdout
    )
    version = resolution["version"]
    beside = published / "synthesizer" / "reports" / f"{version}.html"
    assert beside.is_file()  # train --publish wrote it
    adapter = Path(resolution["adapter_path"])
    assert (adapter / "training_log.json").is_file() and (adapter / "jnreg_config.json").is_file()
    out = tmp_path / "synthesizer.html"
    done = run_jnreg("--store-root", str(published), "report", "synthesizer", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"report of synthesizer {version}: {beside} and {out}" in done.stdout
    page = out.read_text()
    assert 'data-chart="loss"' in page and resolution["digest"] in page
