"""Padding-free packing: a packed row computes what it computes alone, and training learns the same."""

from __future__ import annotations

import pytest

from jnreg.core.training import engine
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
