"""Padding-free packing: a packed row computes what it computes alone, and training learns the same."""

from __future__ import annotations

import json

import pytest

from jnreg.core.training import engine
from jnreg.core.training.packed_trainer import _trained_logits
from tests.helpers import config_for, quiet


@pytest.fixture(scope="module")
def ready(tmp_path_factory):
    """The real tiny model in NF4 with LoRA, as training builds it, with nonzero LoRA B so every layer learns."""
    import torch

    from jnreg.core.host.plugins import Host
    from jnreg.plugins import fact_checker

    host = Host(autoload=False)
    host.register(fact_checker, name="fact_checker")
    agent = host.get("fact_checker")
    out = tmp_path_factory.mktemp("packing") / "out"
    ready = engine.setup(config_for(agent, out, adapter_dropout=0.0), agent, echo=quiet)
    with torch.no_grad():
        for name, param in ready.trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    return ready


def _rows(ready, count=3):
    dataset = ready.trainer.train_dataset
    rows = [dataset[i] for i in range(count)]
    lengths = [len(r["input_ids"]) for r in rows]
    assert len(set(lengths)) > 1, "rows of different lengths make padding and boundaries matter"
    return rows


def test_training_packs_rows_without_attention_across_them(ready):
    from jnreg.core.training.packed_trainer import PackedSFTTrainer
    from jnreg.core.training.packing import ATTENTION, PackedCollator

    assert isinstance(ready.trainer, PackedSFTTrainer)
    assert isinstance(ready.trainer.data_collator, PackedCollator)
    assert ready.trainer.model.config._attn_implementation == ATTENTION


def test_a_packed_row_has_the_logits_and_loss_it_has_alone(ready):
    import torch
    import torch.nn.functional as F

    model = ready.trainer.model
    model.eval()
    rows = _rows(ready)
    packed = ready.trainer.data_collator(rows)
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k not in ("rows", "labels")}).logits[0]
        start = 0
        for row in rows:
            length = len(row["input_ids"])
            ids = torch.tensor([row["input_ids"]])
            alone = model(input_ids=ids).logits[0]
            mine = logits[start : start + length]
            torch.testing.assert_close(mine, alone, rtol=1e-5, atol=1e-5)
            labels = torch.tensor(row["labels"])
            loss_alone = F.cross_entropy(alone[:-1], labels[1:], ignore_index=-100)
            loss_packed = F.cross_entropy(mine[:-1], packed["labels"][0, start + 1 : start + length], ignore_index=-100)
            torch.testing.assert_close(loss_packed, loss_alone, rtol=1e-6, atol=1e-6)
            start += length
    # Without the row boundaries the later rows would see the earlier ones: the check above can fail.
    with torch.no_grad():
        inputs = {k: v for k, v in packed.items() if k not in ("rows", "labels") and not k.startswith(("cu_", "max_"))}
        leaked = model(**inputs).logits[0]
    first = len(rows[0]["input_ids"])
    assert (leaked[first:] - logits[first:]).abs().max() > 1e-2


def _lora_gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_packed_and_padded_batches_give_the_same_loss_and_gradients(ready):
    """The loss TRL trains on with a padded batch, and its gradients, are what the packed batch gives."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    trainer = ready.trainer
    model = trainer.model
    model.train()
    rows = _rows(ready, 4)
    padded = DataCollatorForLanguageModeling(pad_token_id=ready.tokenizer.pad_token_id)(rows)
    model.zero_grad()
    reference = model(**padded).loss  # transformers' mean over the trained next tokens of every row
    reference.backward()
    expected = _lora_gradients(model)

    model.zero_grad()
    loss = trainer.compute_loss(model, trainer.data_collator(rows))
    loss.backward()
    got = _lora_gradients(model)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)

    # Gradient accumulation divides by the trained tokens of all micro-batches, as the Trainer counts them.
    count = sum(int((torch.tensor(r["labels"][1:]) != -100).sum()) for r in rows)
    model.zero_grad()
    halves = [trainer.data_collator(rows[:2]), trainer.data_collator(rows[2:])]
    assert sum(int((b["labels"][..., 1:] != -100).sum()) for b in halves) == count
    total = sum(trainer.compute_loss(model, batch, num_items_in_batch=count) for batch in halves)
    total.backward()
    torch.testing.assert_close(total.detach(), reference.detach(), rtol=1e-5, atol=1e-6)
    for name, grad in _lora_gradients(model).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_whole_text_rows_do_not_learn_their_first_token_from_the_previous_row(ready):
    from jnreg.core.training.packing import PackedCollator

    rows = [{"input_ids": [1, 5, 6, 2], "labels": [1, 5, 6, 2]}, {"input_ids": [1, 7, 2], "labels": [1, 7, 2]}]
    batch = PackedCollator()(rows)
    assert batch["labels"][0].tolist() == [-100, 5, 6, 2, -100, 7, 2]
    assert batch["rows"].tolist() == [4, 3]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2]


WINDOW = 256


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """The tiny model with a sliding window as long as the longest row, as Mistral-7B v0.1 carries one."""
    import json
    import shutil

    from jnreg.core.models.tiny import ensure_tiny_model

    target = tmp_path_factory.mktemp("windowed") / "tiny-windowed"
    shutil.copytree(ensure_tiny_model(), target)
    config = json.loads((target / "config.json").read_text())
    config["sliding_window"] = WINDOW
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_rows_packed_past_the_sliding_window_each_compute_what_they_compute_alone(builtin_agents, windowed, tmp_path):
    import torch

    agent = builtin_agents.get("synthesizer")
    config = config_for(agent, tmp_path / "out", base_model=str(windowed), max_seq_length=WINDOW)
    ready = engine.setup(config, agent, echo=quiet)
    model = ready.trainer.model
    assert model.config.sliding_window == WINDOW and model.config._attn_implementation == "jnreg_rows"
    rows = [ready.trainer.train_dataset[i] for i in range(4)]
    packed = ready.trainer.data_collator(rows)
    assert packed["input_ids"].shape[1] > WINDOW  # the packed sequence outgrows the window, no row does
    model.eval()
    with torch.no_grad():
        # As the trainer runs it: a plain forward on a packed batch would get a dense window mask.
        _, logits, wanted = _trained_logits(model, packed)
        alone = [_trained_logits(model, ready.trainer.data_collator([row]))[1] for row in rows]
    torch.testing.assert_close(logits, torch.cat(alone), rtol=1e-5, atol=1e-5)
    assert wanted.numel() == logits.shape[0] > 0


def test_training_and_evaluation_run_past_the_sliding_window(builtin_agents, windowed, tmp_path):
    from click.testing import CliRunner

    from jnreg.cli import cli

    out = tmp_path / "out"
    done = CliRunner().invoke(
        cli,
        ["train", "synthesizer", "--model_name_or_path", str(windowed), "--output-dir", str(out),
         "--max-seq-length", str(WINDOW), "--train-batch-size", "4", "--max-train-samples", "12",
         "--eval-fraction", "0.25", "--max-steps", "2", "--json"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    metrics = json.loads((out / "training_summary.json").read_text())["metrics"]
    assert metrics["steps"] == 2 and metrics["eval_loss_before"] > 0 and metrics["eval_loss"] > 0
    assert (out / "adapter_model.safetensors").is_file()
