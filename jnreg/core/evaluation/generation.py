"""Answering a prompt the way serving does: the agent's chat template, its token budget and temperature."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jnreg.core.data.rows import Renderer
from jnreg.core.host.spec import AgentSpec

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def generation_options(
    spec: AgentSpec, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int | None, temperature: float | None
) -> dict:
    """``generate()`` keyword arguments for the agent's serving settings; greedy when the temperature is 0."""
    temperature = spec.serving.temperature if temperature is None else temperature
    options: dict[str, Any] = {
        "max_new_tokens": spec.serving.max_new_tokens if max_new_tokens is None else max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature)
    else:
        options.update(do_sample=False)
    return options


def generate_answer(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: AgentSpec,
    prompt: str,
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    prompt_template: str | None = None,
    renderer: Renderer | None = None,
) -> dict[str, Any]:
    """The model's answer to ``prompt`` with its token counts; the model is put in eval mode.

    The prompt is rendered as training rendered it: the chat template, or ``prompt_template``.
    """
    import torch

    model.eval()
    renderer = renderer or Renderer(tokenizer, spec.template, prompt_template)
    ids = torch.tensor([renderer.prompt_ids(prompt)], device=model.device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        output = model.generate(**inputs, **generation_options(spec, tokenizer, max_new_tokens, temperature))
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return {
        "text": tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "new_tokens": int(new_tokens.shape[0]),
        "stopped_at_eos": bool(new_tokens.numel() and new_tokens[-1].item() == tokenizer.eos_token_id),
    }
