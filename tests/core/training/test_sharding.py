"""Data-parallel batches: the last global batch is filled with a blank row that trains and counts nothing."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from jnreg.core.training import engine
from jnreg.core.training.sharding import IGNORE, blank_rows, fill_with_blanks
from tests.helpers import config_for, quiet


def _shards(rows: int, batch: int, processes: int, *, filled: bool) -> list[list[list[int]]]:
    """What each process's batch sampler yields over one epoch of ``rows`` rows in order."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    found = []
    for rank in range(processes):
        shard = BatchSamplerShard(BatchSampler(range(rows), batch, drop_last=False), processes, rank)
        if filled:
            fill_with_blanks(SimpleNamespace(batch_sampler=shard), blank=rows)
        found.append(list(shard))
        assert len(found[-1]) == len(shard)  # as many steps as the Trainer plans
    return found


@pytest.mark.parametrize(("rows", "batch", "processes"), [(5, 2, 2), (7, 2, 2), (8, 2, 2), (1, 1, 2), (10, 1, 3)])
def test_each_row_is_trained_once_in_the_step_one_process_trains_it(rows, batch, processes):
    shards = _shards(rows, batch, processes, filled=True)
    steps = len(shards[0])
    assert all(len(s) == steps for s in shards) and all(len(b) == batch for s in shards for b in s)
    # Step by step, the processes' real rows together are one process's batch of processes × batch rows.
    for step in range(steps):
        real = sorted(i for s in shards for i in s[step] if i != rows)
        global_batch = processes * batch
        assert real == list(range(step * global_batch, min(rows, (step + 1) * global_batch)))
    if rows % (processes * batch):
        # accelerate's own sampler fills the gap with rows from the start, trained twice.
        stock = [i for s in _shards(rows, batch, processes, filled=False) for b in s for i in b]
        assert len(stock) > len(set(stock)) == rows


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """The tiny model with a sliding window shorter than the rows may be, so training pads instead of packing."""
    from jnreg.core.models.tiny import ensure_tiny_model

    target = tmp_path_factory.mktemp("windowed") / "tiny-windowed"
    shutil.copytree(ensure_tiny_model(), target)
    config = json.loads((target / "config.json").read_text())
    config["sliding_window"] = 128
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_a_blank_row_changes_no_loss_gradient_or_token_count(builtin_agents, windowed, tmp_path, layout):
    import torch

    agent = builtin_agents.get("fact_checker")
    extra = {"base_model": str(windowed), "max_seq_length": 512} if layout == "padded" else {}
    trainer = engine.setup(config_for(agent, tmp_path / "out", adapter_dropout=0.0, **extra), agent, echo=quiet).trainer
    assert (type(trainer).__name__ == "PackedSFTTrainer") == (layout == "packed")
    model = trainer.model
    with torch.no_grad():  # nonzero LoRA B, so every LoRA weight has a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    rows = [trainer.train_dataset[i] for i in range(3)]
    blank = {"input_ids": [trainer.processing_class.eos_token_id], "labels": [IGNORE]}

    def step(examples):
        inputs = trainer._prepare_inputs(trainer.data_collator(examples))
        trained = (inputs["labels"][..., 1:] != IGNORE).sum()
        model.train()
        model.zero_grad()
        loss = trainer.compute_loss(model, inputs, num_items_in_batch=trained)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return inputs, trained, float(loss.detach()), grads

    plain, trained, loss, grads = step(rows)
    filled, trained_filled, loss_filled, grads_filled = step([*rows, blank, blank])
    assert int(blank_rows(plain)) == 0 and int(blank_rows(filled)) == 2
    assert int(trained_filled) == int(trained) > 0
    assert int(filled["attention_mask"].sum() - blank_rows(filled)) == int(plain["attention_mask"].sum())
    assert loss_filled == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == grads_filled.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_filled[name], grads[name], rtol=1e-4, atol=1e-7, msg=name)
