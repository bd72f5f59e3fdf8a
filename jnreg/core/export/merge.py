"""A LoRA adapter merged into its base for engines that cannot load LoRA: dequantized weights plus B·A, never 4-bit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from jnreg.errors import ConfigError
from jnreg.fsutil import fsync_dir, owned_name, remove_tree

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = ("bf16", "fp32")
QUANTIZED_PARAMS = ("Params4bit", "Int8Params")  # bitsandbytes' 4-bit and 8-bit weights


def torch_dtype(name: str) -> torch.dtype:
    import torch

    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def _dense_weight(layer: torch.nn.Linear) -> torch.Tensor:
    """A linear layer's weight in fp32, dequantized when bitsandbytes holds it in 4 or 8 bits."""
    from peft.utils.integrations import dequantize_bnb_weight

    weight = layer.weight
    if type(weight).__name__ == QUANTIZED_PARAMS[0]:
        return dequantize_bnb_weight(weight).float()
    if type(weight).__name__ == QUANTIZED_PARAMS[1]:
        return dequantize_bnb_weight(weight, state=layer.state).float()
    return weight.detach().float()


def merge_adapter(model: PeftModel, dtype: str = "bf16") -> PreTrainedModel:
    """The base of a loaded PeftModel with its active LoRA adapter merged in, as a plain ``dtype`` model.

    Each adapted layer becomes ``W + scale·B·A`` with ``W`` the base weight the adapter was trained and served
    against: a quantized base is dequantized first (in fp32), so the merge is never re-quantized and the merged
    model computes what the adapter on its quantized base computes, up to rounding.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    target = torch_dtype(dtype)
    base = model.get_base_model()
    replaced: list[str] = []
    with torch.no_grad():
        for name, module in list(base.named_modules()):
            if any(name.startswith(f"{done}.") for done in replaced):
                continue  # inside a layer already merged: its base layer and the LoRA matrices
            if isinstance(module, LoraLayer):
                layer = module.get_base_layer()
                if not isinstance(layer, torch.nn.Linear):
                    kind = type(layer).__name__
                    raise ConfigError(f"cannot merge the adapter into {name}: a {kind} is not a linear layer")
                weight = _dense_weight(layer)
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        weight = weight + module.get_delta_weight(adapter).float()
            elif isinstance(module, torch.nn.Linear) and type(module.weight).__name__ in QUANTIZED_PARAMS:
                layer, weight = module, _dense_weight(module)  # a quantized layer LoRA did not adapt
            else:
                continue
            dense = torch.nn.Linear(
                weight.shape[1], weight.shape[0], bias=layer.bias is not None, device=weight.device, dtype=torch.float32
            )
            dense.weight.copy_(weight)
            if layer.bias is not None:
                dense.bias.copy_(layer.bias.float())
            base.set_submodule(name, dense)
            replaced.append(name)
    quantizer = getattr(base, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(base)  # the saved config must not ask for bitsandbytes
    base = base.to(target)
    base.config.dtype = target
    return base


def model_card(
    *,
    agent: str,
    version: str,
    digest: str,
    adapter_name: str,
    base_model: str,
    dtype: str,
    prompt_template: str | None = None,
) -> str:
    """The merged model's README; it says how to prompt the model when training did not use the chat template."""
    prompting = ""
    if prompt_template is not None:
        # An engine would apply the tokenizer's chat template, which this model was not trained on.
        prompting = (
            f"- prompts: trained with the template `{prompt_template}`, not the tokenizer's chat template; "
            "send the text before `{response}` as the whole prompt\n"
        )
    return (
        f"# {adapter_name} merged into {base_model}\n\n"
        f"The JustNews `{agent}` agent's LoRA adapter, version `{version}` (digest `{digest}`), merged into "
        f"its base model `{base_model}` by `jnreg export`: the quantized base weights were dequantized, the "
        f"adapter merged into them in fp32, and the result saved in {dtype}, a plain transformers model for "
        "engines that cannot load LoRA.\n\n"
        f"- base model: `{base_model}`\n"
        f"- adapter: `{adapter_name}`, version `{version}`\n"
        f"- adapter digest: `{digest}`\n"
        f"- dtype: {dtype}\n" + prompting
    )


def check_target(target: Path) -> Path:
    """The directory ``target`` will be written in, proven writable; checked before the slow load and merge."""
    target = Path(target)
    if os.path.lexists(target):
        raise ConfigError(f"export directory {target} already exists; choose a new one")
    parent = target.parent if str(target.parent) else Path(".")
    if parent.is_file():
        raise ConfigError(f"cannot export into {target}: {parent} is a file, not a directory")
    if not parent.is_dir():
        raise ConfigError(f"the directory {parent} for the export does not exist")
    probe = parent / owned_name("probe", target.name)
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write the export into {parent}: {exc.strerror or exc}") from None
    return parent


def write_model_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path, card: str) -> None:
    """Save model, tokenizer and card as a transformers directory, renamed into place only when complete."""
    target = Path(target)
    parent = check_target(target)
    staging = parent / owned_name("staging", target.name)
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        (staging / "README.md").write_text(card, encoding="utf-8")
        fsync_dir(staging)
        os.rename(staging, target)
        fsync_dir(parent)
    except BaseException as exc:
        if os.path.lexists(staging):
            remove_tree(staging)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write the export into {parent}: {exc.strerror or exc}") from None
        raise
