from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from jnreg.cli import cli
from jnreg.core.training import checkpoints, engine
from jnreg.core.training.config import build_config, read_config_file
from jnreg.core.training.dryrun import dry_run
from jnreg.errors import ConfigError
from jnreg.schemas import errors as schema_errors
from tests.helpers import TINY, config_for, quiet, run_jnreg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One synthesizer adapter trained on the tiny model, shared by the tests that only read it."""
    from jnreg.core.host.plugins import Host
    from jnreg.plugins import synthesizer

    host = Host(autoload=False)
    host.register(synthesizer, name="synthesizer")
    agent = host.get("synthesizer")
    output = tmp_path_factory.mktemp("trained") / "adapter"
    summary = engine.train(config_for(agent, output), agent, echo=quiet)
    return agent, output, summary


def test_training_lowers_eval_loss_and_writes_a_valid_summary(trained):
    _, output, summary = trained
    metrics = summary["metrics"]
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert metrics["steps"] > 0 and metrics["runtime_s"] > 0 and metrics["tokens_per_second"] > 0
    assert metrics["peak_memory_bytes"] > 0
    stored = json.loads((output / "training_summary.json").read_text())
    assert schema_errors("training_summary", stored) == []
    assert stored["dry_run"] is False and stored["quantization"] == "nf4" and stored["seed"] == 42
    assert stored["dataset"]["rows"] + stored["dataset"]["eval_rows"] == 16
    assert len(stored["dataset"]["sha256"]) == 64
    assert stored["library_versions"]["bitsandbytes"] and stored["library_versions"]["trl"]
    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == TINY
    assert adapter_config["r"] == 16 and adapter_config["peft_type"] == "LORA"
    assert (output / "adapter_model.safetensors").is_file() and (output / "tokenizer.json").is_file()
    assert schema_errors("train_config", json.loads((output / "jnreg_config.json").read_text())) == []


def test_base_is_nf4_with_double_quantization_and_labels_mask_the_prompt(builtin_agents, tmp_path):
    import bitsandbytes as bnb

    agent = builtin_agents.get("fact_checker")
    ready = engine.setup(config_for(agent, tmp_path / "out"), agent, echo=quiet)
    layers = [m for m in ready.trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_type == "nf4" for m in layers)
    assert all(m.weight.quant_state.nested for m in layers), "double quantization is off"

    tokenizer = ready.tokenizer
    rows = ready.prepared.train.rows
    dataset = ready.trainer.train_dataset
    for index in range(len(rows)):
        ids, mask = rows[index]["input_ids"], rows[index]["completion_mask"]
        labels = dataset[index]["labels"]
        assert dataset[index]["input_ids"] == ids
        prompt_len = mask.index(1)
        assert labels[:prompt_len] == [-100] * prompt_len
        assert labels[prompt_len:] == ids[prompt_len:]
        assert labels[-1] == tokenizer.eos_token_id
        assert ids.count(tokenizer.bos_token_id) == 1

    # Rows are packed end to end, without padding: each row's span holds its own labels, EOS last.
    batch = ready.trainer.data_collator([dataset[0], dataset[1]])
    lengths = [len(dataset[row]["input_ids"]) for row in range(2)]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["cu_seq_lens_q"].tolist() == [0, lengths[0], sum(lengths)]
    start = 0
    for row, length in enumerate(lengths):
        span = slice(start, start + length)
        assert batch["input_ids"][0, span].tolist() == dataset[row]["input_ids"]
        assert batch["labels"][0, span].tolist() == dataset[row]["labels"]
        assert batch["labels"][0, start + length - 1].item() == tokenizer.eos_token_id
        assert batch["position_ids"][0, span].tolist() == list(range(length))
        start += length


def _lora_gradients(model, batch) -> dict:
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_an_evaluation_leaves_the_training_gradients_unchanged(builtin_agents, tmp_path):
    """bitsandbytes repacks 4-bit weights on CPU in eval mode; training after an evaluation must not see that."""
    import torch

    agent = builtin_agents.get("fact_checker")
    ready = engine.setup(config_for(agent, tmp_path / "out", adapter_dropout=0.0), agent, echo=quiet)
    trainer = ready.trainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    # Nonzero LoRA B, so gradients reach the A matrices and through the frozen 4-bit weights below them.
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    before = _lora_gradients(trainer.model, batch)
    trainer.evaluate()
    after = _lora_gradients(trainer.model, batch)
    assert before.keys() == after.keys() and before
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7, msg=name)


def test_same_seed_gives_the_same_adapter_bytes(builtin_agents, tmp_path):
    agent = builtin_agents.get("fact_checker")
    quick = {"max_train_samples": 8, "epochs": 1.0, "eval_fraction": 0.0}
    engine.train(config_for(agent, tmp_path / "a", **quick), agent, echo=quiet)
    engine.train(config_for(agent, tmp_path / "b", **quick), agent, echo=quiet)
    first = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    assert first == (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    engine.train(config_for(agent, tmp_path / "c", seed=7, **quick), agent, echo=quiet)
    assert first != (tmp_path / "c" / "adapter_model.safetensors").read_bytes()


def test_resume_ends_with_the_same_adapter_as_an_uninterrupted_run(builtin_agents, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                control.should_training_stop = True

    agent = builtin_agents.get("fact_checker")
    steps = {"max_steps": 6, "save_steps": 2, "save_total_limit": 3, "eval_fraction": 0.0, "max_train_samples": 12}
    uninterrupted = engine.train(config_for(agent, tmp_path / "whole", **steps), agent, echo=quiet)
    interrupted = config_for(agent, tmp_path / "split", **steps)
    engine.train(interrupted, agent, echo=quiet, callbacks=[StopAt()])
    assert (tmp_path / "split" / "checkpoint-4").is_dir()
    resumed = engine.train(config_for(agent, tmp_path / "split", resume=True, **steps), agent, echo=quiet)
    assert resumed["metrics"]["steps"] == 6
    # The whole run's train loss, not the last two steps' (5.2 against 5.8 before it was kept with the checkpoint).
    assert resumed["metrics"]["train_loss"] == pytest.approx(uninterrupted["metrics"]["train_loss"], abs=1e-4)
    whole = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    split = load_file(tmp_path / "split" / "adapter_model.safetensors")
    assert whole.keys() == split.keys()
    for key in whole:
        torch.testing.assert_close(split[key], whole[key], rtol=1e-5, atol=1e-6)


def test_resume_skips_incomplete_checkpoints_and_a_finished_run_is_left_as_it_is(builtin_agents, tmp_path):
    from safetensors.torch import load_file

    agent = builtin_agents.get("fact_checker")
    out = tmp_path / "run"
    steps = {"max_steps": 2, "save_steps": 1, "save_total_limit": 3, "eval_fraction": 0.0, "max_train_samples": 8}
    finished = engine.train(config_for(agent, out, **steps), agent, echo=quiet)
    (out / "checkpoint-3").mkdir()  # what a run killed while the Trainer wrote it leaves
    (out / "checkpoint-3" / "README.md").write_text("model card")
    (out / "checkpoint-99").mkdir()  # a stray directory
    adapter = (out / "adapter_model.safetensors").read_bytes()

    lines: list[str] = []
    again = engine.train(config_for(agent, out, resume=True, **steps), agent, echo=lines.append)
    assert lines[:3] == [
        "skipping checkpoint-99: incomplete (no adapter weights, optimizer.pt, scheduler.pt, trainer_state.json),"
        " as a run stopped while writing it leaves it",
        "skipping checkpoint-3: incomplete (no adapter weights, optimizer.pt, scheduler.pt, trainer_state.json),"
        " as a run stopped while writing it leaves it",
        f"resuming from {out / 'checkpoint-2'} (step 2)",
    ]
    assert any(line.startswith("nothing to train: the run already finished at step 2") for line in lines), lines
    assert not any(line.startswith("step ") for line in lines), lines
    assert again == finished and (out / "adapter_model.safetensors").read_bytes() == adapter

    # Killed after its last checkpoint but before the adapter was written: the checkpoint's adapter is.
    (out / "training_summary.json").unlink()
    (out / "adapter_model.safetensors").unlink()
    lines.clear()
    written = engine.train(config_for(agent, out, resume=True, **steps), agent, echo=lines.append)
    assert written["metrics"]["steps"] == 2 and not any(line.startswith("step ") for line in lines), lines
    assert written["metrics"]["train_loss"] == pytest.approx(finished["metrics"]["train_loss"], abs=1e-6)
    saved = load_file(out / "adapter_model.safetensors")
    checkpoint = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert saved.keys() == checkpoint.keys() and all(saved[k].equal(checkpoint[k]) for k in saved)

    # A larger --max-steps trains on to it.
    lines.clear()
    longer = engine.train(config_for(agent, out, resume=True, **{**steps, "max_steps": 3}), agent, echo=lines.append)
    assert longer["metrics"]["steps"] == 3 and any(line.startswith("trained 3 steps") for line in lines), lines
    assert checkpoints.incomplete(checkpoints.Checkpoint(out / "checkpoint-3", 3)) is None
    assert not (out / "checkpoint-3" / "README.md").read_text().startswith("model card")


def test_save_total_limit_one_keeps_the_newest_checkpoint(builtin_agents, tmp_path):
    """9 training rows, 4 a step: an evaluation ends the first epoch at step 3, none comes at step 4.

    The best-model bookkeeping used to keep checkpoint-3 (the best, as the only one evaluated) and
    delete checkpoint-4, so a later --resume went back to step 3.
    """
    agent = builtin_agents.get("fact_checker")
    out = tmp_path / "run"
    config = config_for(agent, out, max_steps=4, save_steps=1, save_total_limit=1, max_train_samples=12)
    engine.train(config, agent, echo=quiet)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]


def test_resume_without_a_checkpoint_is_a_clear_error(builtin_agents, tmp_path):
    agent = builtin_agents.get("fact_checker")
    with pytest.raises(ConfigError, match="no checkpoint"):
        engine.train(config_for(agent, tmp_path / "empty", resume=True), agent, echo=quiet)


def test_dry_run_with_ten_samples_from_the_console_script(tmp_path):
    out = tmp_path / "dry"
    done = run_jnreg(
        "train", "--agent", "synthesizer", "--model_name_or_path", TINY, "--output_dir", str(out),
        "--dry-run", "--max-train-samples", "10",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "bitsandbytes" in text and "CPU" in text
    assert "⟦" in text and "⟧" in text and "p95" in text and "supervised" in text
    assert "GPU memory estimate" in text and "RTX 3090" in text
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["dry_run"] is True and schema_errors("training_summary", summary) == []
    assert summary["dataset"]["rows"] + summary["dataset"]["eval_rows"] == 10
    assert not (out / "adapter_model.safetensors").exists()


def test_a_dry_run_into_a_trained_run_keeps_its_outputs_and_publish_stores_the_training(trained, tmp_path):
    import shutil

    from jnreg.registry.store import ModelStore

    agent, output, summary = trained
    run = shutil.copytree(output, tmp_path / "adapter")
    before = {name: (run / name).read_bytes() for name in ("training_summary.json", "jnreg_config.json")}
    lines: list[str] = []
    dry_run(config_for(agent, run, learning_rate=0.01), agent, echo=lines.append)
    assert {name: (run / name).read_bytes() for name in before} == before
    report = json.loads((run / "dry_run_summary.json").read_text())
    assert report["dry_run"] is True and schema_errors("training_summary", report) == []
    assert json.loads((run / "dry_run_config.json").read_text())["learning_rate"] == 0.01
    assert "kept the trained run's training_summary.json" in lines[-1]
    stored = ModelStore(tmp_path / "store").publish("synthesizer", run, version="v1")
    published = json.loads((stored.path / "training_summary.json").read_text())
    assert published["dry_run"] is False and published["metrics"] == summary["metrics"]
    assert not (stored.path / "dry_run_summary.json").exists()


def test_saved_config_reruns_the_same_settings(builtin_agents, tmp_path):
    runner = CliRunner()
    first = tmp_path / "first"
    args = ["train", "analyst", "--model-name-or-path", TINY, "--adapter-r", "8", "--epochs", "2"]
    done = runner.invoke(cli, [*args, "--max-train-samples", "6", "--output-dir", str(first), "--dry-run"])
    assert done.exit_code == 0, done.output
    saved = first / "jnreg_config.json"
    again = runner.invoke(cli, ["train", "--config", str(saved), "--dry-run"])
    assert again.exit_code == 0, again.output
    assert json.loads(saved.read_text()) == json.loads((first / "jnreg_config.json").read_text())
    agent = builtin_agents.get("analyst")
    rebuilt = build_config(agent.spec, read_config_file(saved), {})
    assert rebuilt.to_document() == json.loads(saved.read_text())


def test_settings_precedence_core_plugin_file_flags(builtin_agents, tmp_path):
    agent = builtin_agents.get("fact_checker")
    assert agent.spec.defaults.max_seq_length == 1024  # the plugin's, over the core default 2048
    config_file = tmp_path / "run.toml"
    config_file.write_text('[train]\nadapter-r = 8\nlearning_rate = 0.001\nmodel_name_or_path = "x/y"\n')
    values = read_config_file(config_file)
    config = build_config(agent.spec, values, {"learning_rate": 0.005, "epochs": None})
    assert (config.max_seq_length, config.adapter_r, config.learning_rate) == (1024, 8, 0.005)
    assert config.base_model == "x/y" and config.epochs == 3.0
    assert config.output_dir == str(Path("output") / "adapters" / "mistral_fact_checker_v1")
    config_file.write_text('{"adapter_rank": 8}')
    config_file = config_file.rename(tmp_path / "run.json")
    with pytest.raises(ConfigError, match="unknown setting.*adapter_rank"):
        read_config_file(config_file)


def test_the_builtin_model_trains_with_its_own_settings_unless_the_user_sets_them(builtin_agents, tmp_path):
    from jnreg.core.training.config import BUILTIN_MODEL_SETTINGS

    spec = builtin_agents.get("synthesizer").spec
    hub = build_config(spec, {}, {})
    assert hub.builtin_settings == () and hub.learning_rate == 2e-4 and hub.gradient_accumulation == 8
    tiny = build_config(spec, {}, {"base_model": TINY, "output_dir": str(tmp_path / "out")})
    assert {k: getattr(tiny, k) for k in tiny.builtin_settings} == BUILTIN_MODEL_SETTINGS
    mine = build_config(spec, {"epochs": 1.0}, {"base_model": TINY, "learning_rate": 1e-3})
    assert (mine.learning_rate, mine.epochs) == (1e-3, 1.0)
    assert set(mine.builtin_settings) == set(BUILTIN_MODEL_SETTINGS) - {"learning_rate", "epochs"}
    # The saved config holds the values themselves, so a rerun from it trains the same way.
    saved = tiny.to_document()
    assert "builtin_settings" not in saved and saved["learning_rate"] == BUILTIN_MODEL_SETTINGS["learning_rate"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning-rate", "-1"], "invalid setting learning_rate: -1.0 is less than or equal to the minimum"),
        (["--adapter-r", "0"], "invalid setting adapter_r: 0 is less than the minimum of 1"),
        (["--eval-fraction", "1.5"], "invalid setting eval_fraction"),
        (["--adapter-name", "../evil"], "invalid setting adapter_name"),
        (["--adapter-version", "../x", "--publish"], "invalid version label '../x'"),
        (["--early-stopping-patience", "2", "--eval-fraction", "0"], "early stopping needs evaluation rows"),
        (["--output-dir", "/proc/jnreg-cannot-write"], "cannot write the output directory"),
        (["--train-files", "a.jsonl", "--dataset-name", "x"], "not both"),
        (["--prompt-template", "{prompt}"], "{response} exactly once"),
        (["--target-modules", "nonexistent_proj"], "cannot apply LoRA"),
    ],
)
def test_bad_settings_are_one_line_errors(builtin_agents, tmp_path, flags, message):
    data = tmp_path / "a.jsonl"
    data.write_text(builtin_agents.get("fact_checker").spec.sample_data.read_text())
    flags = [str(data) if f == "a.jsonl" else f for f in flags]
    dry = [] if "--target-modules" in flags or "--publish" in flags else ["--dry-run"]
    output = [] if "--output-dir" in flags else ["--output-dir", str(tmp_path / "o")]
    args = ["train", "fact_checker", "--model_name_or_path", TINY, *output, *dry]
    done = CliRunner().invoke(cli, [*args, "--max-train-samples", "4", *flags])
    assert done.exit_code == 1, done.output
    assert message in done.output.strip().splitlines()[-1]
    assert "Traceback" not in done.output
    assert not (tmp_path / "o" / "adapter_model.safetensors").exists()  # refused before any training


def test_hub_model_offline_says_how_to_use_the_builtin_model(tmp_path):
    done = run_jnreg("train", "synthesizer", "--dry-run", "--output-dir", str(tmp_path / "o"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert "mistralai/Mistral-7B-Instruct-v0.3" in error and "jnreg:tiny-mistral" in error


def test_hf_token_is_never_written(builtin_agents, tmp_path, monkeypatch):
    secret = "hf_do_not_write_me_4242"
    monkeypatch.setenv("HF_TOKEN", secret)
    agent = builtin_agents.get("fact_checker")
    engine.train(
        config_for(agent, tmp_path / "o", max_train_samples=4, epochs=1.0, eval_fraction=0.0), agent, echo=quiet
    )
    for path in (tmp_path / "o").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_early_stopping_stops_when_eval_loss_stops_improving(builtin_agents, tmp_path):
    agent = builtin_agents.get("fact_checker")
    # A learning rate far too high makes eval loss rise after the first steps.
    config = config_for(
        agent, tmp_path / "o", learning_rate=0.5, eval_steps=1, early_stopping_patience=1, max_steps=12, epochs=5.0
    )
    summary = engine.train(config, agent, echo=quiet)
    assert summary["metrics"]["steps"] < 12


def test_early_stopping_with_save_total_limit_one_keeps_the_newest_checkpoint_beside_the_best(builtin_agents, tmp_path):
    """Early stopping tracks a best model; the last save must survive the Trainer's cleanup all the same."""
    agent = builtin_agents.get("fact_checker")
    out = tmp_path / "o"
    config = config_for(
        agent, out, learning_rate=0.5, eval_steps=1, early_stopping_patience=1, max_steps=12, epochs=5.0,
        save_steps=1, save_total_limit=1,
    )  # fmt: skip
    steps = engine.train(config, agent, echo=quiet)["metrics"]["steps"]
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert steps < 12 and kept[-1] == steps  # the newest, the one --resume continues from
    state = json.loads((out / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    best = state["best_model_checkpoint"]
    assert best is not None and steps > int(best.rsplit("-", 1)[1]) and len(kept) <= 2


def test_tensorboard_logs_are_written_in_the_output_dir(builtin_agents, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    agent = builtin_agents.get("fact_checker")
    config = config_for(agent, tmp_path / "o", report_to="tensorboard", max_train_samples=8, epochs=1.0)
    engine.train(config, agent, echo=quiet)
    assert list((tmp_path / "o" / "runs").rglob("events.out.tfevents.*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


@pytest.mark.parametrize("shape", [(1, 1, 64), (2, 5, 64)])
def test_nf4_layer_input_gradients_match_the_dequantized_weights(shape):
    """LoRA in earlier layers learns through the 4-bit layers' input gradients; check them on this device."""
    import bitsandbytes as bnb
    import torch

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(32, 64), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")
    dense = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    x = torch.randn(*shape, requires_grad=True)
    upstream = torch.randn(*shape[:-1], 32)
    (layer(x) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, upstream @ dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantization", ["8bit", "none"])
def test_other_quantizations_train(builtin_agents, tmp_path, quantization):
    agent = builtin_agents.get("fact_checker")
    config = config_for(agent, tmp_path / "o", quantization=quantization, max_steps=2, eval_fraction=0.0)
    summary = engine.train(config, agent, echo=quiet)
    assert summary["quantization"] == quantization and summary["metrics"]["steps"] == 2
    assert (tmp_path / "o" / "adapter_model.safetensors").is_file()


def test_memory_estimate_for_mistral_7b_fits_a_3090():
    from transformers import MistralConfig

    from jnreg.core.training.preflight import RTX_3090_BYTES, GiB, estimate_gpu_memory

    mistral_7b = MistralConfig(vocab_size=32768)  # the defaults are Mistral-7B's shape
    estimate = estimate_gpu_memory(
        mistral_7b, quantization="nf4", target_modules=("q_proj", "v_proj"), r=16, batch_size=1, seq_len=2048
    )
    assert 7.0e9 < estimate["parameters"] < 7.5e9
    assert 3.5 * GiB < estimate["weights_bytes"] < 5 * GiB  # 4-bit weights, bf16 embeddings
    assert estimate["total_bytes"] < RTX_3090_BYTES
    unquantized = estimate_gpu_memory(
        mistral_7b, quantization="none", target_modules=("q_proj",), r=16, batch_size=1, seq_len=2048
    )
    assert unquantized["total_bytes"] > estimate["total_bytes"] + 8 * GiB


def test_train_files_take_several_paths_after_one_flag_as_the_guide_writes_them(builtin_agents, tmp_path):
    sample = builtin_agents.get("fact_checker").spec.sample_data.read_text().splitlines()
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("\n".join(sample[:5]) + "\n")
    second.write_text("\n".join(sample[5:9]) + "\n")
    out = tmp_path / "out"
    done = CliRunner().invoke(
        cli,
        ["train", "fact_checker", "--train-files", str(first), str(second), "--model_name_or_path", TINY,
         "--output_dir", str(out), "--eval-fraction", "0", "--dry-run", "--json"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["dataset"]["rows"] == 9
    assert summary["dataset"]["source"] == f"{first}, {second}"
    saved = json.loads((out / "jnreg_config.json").read_text())
    assert saved["train_files"] == [str(first), str(second)]


def test_eval_files_replace_the_held_out_fraction(builtin_agents, tmp_path):
    sample = builtin_agents.get("fact_checker").spec.sample_data.read_text().splitlines()
    train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_file.write_text("\n".join(sample[:10]) + "\n")
    eval_file.write_text("\n".join(sample[10:13]) + "\n")
    agent = builtin_agents.get("fact_checker")
    config = config_for(
        agent, tmp_path / "o", train_files=(str(train_file),), eval_files=(str(eval_file),), max_train_samples=None
    )
    summary = dry_run(config, agent, echo=quiet)
    assert (summary["dataset"]["rows"], summary["dataset"]["eval_rows"]) == (10, 3)


def test_publish_problems_are_found_before_training(builtin_agents, tmp_path):
    store_root = tmp_path / "store"
    store_root.mkdir()
    (store_root / "AGENT_MODEL_MAP.json").write_text("{ not json")
    out = tmp_path / "o"
    done = CliRunner().invoke(
        cli,
        ["--store-root", str(store_root), "train", "fact_checker", "--model_name_or_path", TINY,
         "--output-dir", str(out), "--max-steps", "1", "--publish"],
    )  # fmt: skip
    assert done.exit_code == 1
    assert "AGENT_MODEL_MAP.json" in done.output.strip().splitlines()[-1]
    assert not (out / "adapter_model.safetensors").exists()


def test_dry_run_fails_when_the_model_would_not_fit(builtin_agents, tmp_path, monkeypatch):
    from jnreg.core.training import preflight
    from jnreg.errors import EnvironmentCheckError

    monkeypatch.setattr(preflight, "RTX_3090_BYTES", 1024)
    agent = builtin_agents.get("fact_checker")
    with pytest.raises(EnvironmentCheckError, match="training needs about"):
        dry_run(config_for(agent, tmp_path / "o", max_train_samples=4), agent, echo=quiet)
    assert json.loads((tmp_path / "o" / "training_summary.json").read_text())["dry_run"] is True


def test_training_keeps_its_per_step_log_and_the_data_files(trained):
    """training_log.json: every logging step's figures, adding up to the summary's; the data files' sha256."""
    import hashlib

    agent, output, summary = trained
    log = json.loads((output / "training_log.json").read_text())
    assert schema_errors("training_log", log) == [] and log["logging_steps"] == 2
    steps = [entry for entry in log["steps"] if "loss" in entry]
    evals = [entry for entry in log["steps"] if "eval_loss" in entry]
    metrics = summary["metrics"]
    assert [e["step"] for e in steps] == [1, *range(2, metrics["steps"] + 1, 2)]  # logging_first_step, then every 2
    assert all(e["learning_rate"] >= 0 and e["tokens_per_second"] > 0 for e in steps)
    assert evals[0]["step"] == 0 and evals[0]["eval_loss"] == pytest.approx(metrics["eval_loss_before"])
    assert evals[-1]["eval_loss"] == pytest.approx(metrics["eval_loss"])
    # The tokens counted per step are the summary's: the last step's running total is the run's.
    assert steps[-1]["step"] == metrics["steps"] and steps[-1]["input_tokens"] == metrics["input_tokens"]
    dataset = summary["dataset"]
    histogram = dataset["length_histogram"]
    assert sum(histogram["counts"]) == dataset["rows"] and len(histogram["edges"]) == len(histogram["counts"]) + 1
    sample = agent.spec.sample_data
    assert dataset["files"] == [
        {"role": "train", "path": str(sample), "sha256": hashlib.sha256(sample.read_bytes()).hexdigest()}
    ]
