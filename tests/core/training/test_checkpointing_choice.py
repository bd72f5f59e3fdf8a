"""Gradient checkpointing is chosen from the memory estimate: on where a batch would not fit, off where it does."""

from __future__ import annotations

from types import SimpleNamespace

from jnreg.core.training.config import TrainConfig
from jnreg.core.training.preflight import GiB, Report, activation_bytes, needs_checkpointing


def _rows(longest: int) -> SimpleNamespace:
    return SimpleNamespace(train=SimpleNamespace(lengths=[longest // 2, longest]))


def _config(**values) -> TrainConfig:
    return TrainConfig(agent="a", adapter_name="a", output_dir="o", **values)


def test_mistral_7b_at_2048_tokens_recomputes_on_a_24_gb_card_but_not_on_an_80_gb_one():
    from transformers import MistralConfig

    mistral_7b = MistralConfig(vocab_size=32768)
    config = _config(max_seq_length=2048, train_batch_size=1, quantization="nf4")
    assert needs_checkpointing(mistral_7b, config, _rows(2048), Report(device="cuda", gpu_bytes=24 * GiB))
    assert not needs_checkpointing(mistral_7b, config, _rows(2048), Report(device="cuda", gpu_bytes=80 * GiB))
    # Short rows fit a 24 GB card without recomputing.
    assert not needs_checkpointing(mistral_7b, config, _rows(256), Report(device="cuda", gpu_bytes=24 * GiB))


def test_checkpointing_keeps_a_fraction_of_the_activations():
    from transformers import MistralConfig

    mistral_7b = MistralConfig(vocab_size=32768)
    kept = activation_bytes(mistral_7b, 2048, dtype_bytes=2, checkpointing=True)
    full = activation_bytes(mistral_7b, 2048, dtype_bytes=2, checkpointing=False)
    assert 10 * kept < full < 24 * GiB


def test_the_built_in_model_never_recomputes_on_the_cpu():
    from transformers import MistralConfig

    from jnreg.core.models.tiny import ARCHITECTURE

    tiny = MistralConfig(vocab_size=4096, **ARCHITECTURE)
    config = _config(max_seq_length=2048, train_batch_size=4)
    assert not needs_checkpointing(tiny, config, _rows(2048), Report(device="cpu"))
