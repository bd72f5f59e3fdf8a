"""``jnreg.registry.load``: checksums and base model are checked first, then a real adapter loads on the tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jnreg.errors import IntegrityError
from jnreg.registry import ModelStore, load
from tests.registry_helpers import MISTRAL, TINY, make_adapter

os.environ["HF_HUB_OFFLINE"] = "1"


def test_load_refuses_a_tampered_adapter_before_loading_anything(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    path = store.publish("critic", make_adapter(tmp_path / "src", seed=1), version="v1").path
    os.chmod(path / "adapter_config.json", 0o644)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 64}))
    with pytest.raises(IntegrityError, match="refusing to load critic v1: .*adapter_config.json"):
        load("critic", store_root=store.root, quantization=None)


def test_load_refuses_a_base_model_the_map_does_not_name(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("critic", make_adapter(tmp_path / "src", seed=1, base_model=TINY), version="v1")
    document = json.loads(store.map_path.read_text())
    document["base_models"]["tiny-mistral"]["hf_id"] = MISTRAL
    store.map_path.write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match="trained on 'jnreg:tiny-mistral' but agent map .* names 'mistralai"):
        load("critic", store_root=store.root, quantization=None)


def test_load_returns_the_published_adapter_on_its_base(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    models = pytest.importorskip("jnreg.core.models.loading")
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = models.load_base_model(TINY, None)
    tokenizer = models.load_tokenizer(TINY)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False
    )  # random B, so the adapter changes the output
    trained = get_peft_model(base, config)
    out = tmp_path / "out"
    trained.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # The trainer records the base model's public id, not a cache path.
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = TINY
    (out / "adapter_config.json").write_text(json.dumps(adapter_config))
    store = ModelStore(tmp_path / "store")
    store.publish("analyst", out, version="v1")

    model, loaded_tokenizer = load("analyst", store_root=store.root, quantization=None)
    assert type(model).__name__.startswith("PeftModel") and not model.training
    assert loaded_tokenizer.pad_token_id != loaded_tokenizer.eos_token_id
    ids = loaded_tokenizer("The council approved the budget.", return_tensors="pt").input_ids
    trained.eval()
    with torch.no_grad():
        expected = trained(ids).logits
        got = model(ids).logits
        with trained.disable_adapter():
            plain = trained(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)
