"""Trying an adapter: load it through the registry and answer with the agent's serving template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jnreg.core.plugins import get_host


def generate_answer(
    agent: str,
    prompt: str,
    *,
    version: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    quantization: str | None = "nf4",
    store_root: Path | None = None,
    agent_map: Path | None = None,
) -> dict[str, Any]:
    """Generate an answer the way serving would; returns text, version and token counts."""
    import torch

    from jnreg.core.models import quiet_library_warnings
    from jnreg.registry import load, resolve

    quiet_library_warnings()
    spec = get_host().get(agent).spec
    resolution = resolve(agent, version, store_root=store_root, agent_map=agent_map)
    model, tokenizer = load(agent, resolution.version, quantization, store_root=store_root, agent_map=agent_map)
    model.eval()
    text = tokenizer.apply_chat_template(spec.template.messages(prompt), tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(model.device)
    temperature = spec.serving.temperature if temperature is None else temperature
    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens or spec.serving.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature)
    else:
        options.update(do_sample=False)
    with torch.no_grad():
        output = model.generate(**inputs, **options)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return {
        "agent": agent,
        "version": resolution.version,
        "text": tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "new_tokens": int(new_tokens.shape[0]),
        "stopped_at_eos": bool(new_tokens.numel() and new_tokens[-1].item() == tokenizer.eos_token_id),
    }
