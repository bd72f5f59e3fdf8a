"""Base models and tokenizers: hub ids, local directories, and the built-in ``jnreg:tiny-mistral``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.errors import ModelError, first_line

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

TINY_MODEL_ID = "jnreg:tiny-mistral"
QUANTIZATIONS = ("nf4", "8bit", "none")


def is_builtin(model_id: str) -> bool:
    return model_id.startswith("jnreg:")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "no")


def model_path(model_id: str, *, require_config: bool = True) -> str:
    """A name ``from_pretrained`` accepts: the built-in model's cache directory, a local path or a hub id.

    A local directory must hold config.json unless only its tokenizer is wanted (an adapter
    directory has the tokenizer but no model config).
    """
    if is_builtin(model_id):
        if model_id != TINY_MODEL_ID:
            raise ModelError(f"unknown built-in model {model_id!r}; the built-in model is {TINY_MODEL_ID}")
        from jnreg.core.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    if os.path.isabs(model_id) or model_id.startswith((".", "~")) or Path(model_id).exists():
        path = Path(model_id).expanduser()
        if require_config and not (path / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json")
        return str(path)
    return model_id


def _hub_error(model_id: str, exc: Exception) -> ModelError:
    where = "offline (HF_HUB_OFFLINE is set) and not in the local cache" if offline() else f"not loadable: {exc}"
    return ModelError(
        f"cannot load {model_id!r}: {where}. Use --model_name_or_path {TINY_MODEL_ID} for the built-in "
        "model, or a local directory holding the model"
    )


def _load(what: str, model_id: str, loader: Any, **kwargs: Any) -> Any:
    path = model_path(model_id, require_config=what != "tokenizer")
    try:
        return loader(path, **kwargs)
    except ModelError:
        raise
    except (OSError, ValueError) as exc:
        if path == model_id and not is_builtin(model_id):
            raise _hub_error(model_id, exc) from None
        raise ModelError(f"cannot load the {what} of {model_id!r}: {first_line(exc)}") from None


def load_tokenizer(
    model_id_or_path: str, *, token: str | None = None, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token that is never EOS (so padding can never mask EOS out of the labels)."""
    from transformers import AutoTokenizer

    tokenizer = _load("tokenizer", model_id_or_path, AutoTokenizer.from_pretrained, token=token, revision=revision)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # Mistral's tokenizer has no pad token; <unk> is never produced by its byte-fallback vocabulary.
        if tokenizer.unk_token is None or tokenizer.unk_token_id == tokenizer.eos_token_id:
            raise ModelError(f"tokenizer of {model_id_or_path!r} has neither a pad token nor an unk token to pad with")
        tokenizer.pad_token = tokenizer.unk_token
    if tokenizer.chat_template is None:
        raise ModelError(f"tokenizer of {model_id_or_path!r} has no chat template; pass --prompt-template instead")
    return tokenizer


def load_config(model_id: str, *, token: str | None = None, revision: str | None = None) -> PretrainedConfig:
    from transformers import AutoConfig

    return _load("config", model_id, AutoConfig.from_pretrained, token=token, revision=revision)


def quiet_bitsandbytes() -> None:
    """bitsandbytes logs a warning on every CPU import about an optional kernel package; it changes nothing."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def quiet_library_warnings() -> None:
    """Silence library warnings and logs that say nothing actionable to a jnreg user."""
    import warnings

    quiet_bitsandbytes()
    # transformers 5 renames gradient_checkpointing to activation_checkpointing; TRL still uses the old names.
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6.*", category=FutureWarning)
    # bitsandbytes' CPU gemv_4bit kernel has no autograd registration; its input gradients were checked
    # against the dequantized weights (tests/test_train.py), so the warning's "may be incorrect" does not apply.
    warnings.filterwarnings("ignore", message=r"bitsandbytes::gemv_4bit: an autograd kernel", category=UserWarning)
    # Per-file "Loading weights" bars for a model of a few files; the training bar is separate and stays.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def compute_dtype(device: str) -> torch.dtype:
    """bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on the CPU."""
    import torch

    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def quantization_config(quantization: str | None, device: str) -> BitsAndBytesConfig | None:
    """bitsandbytes settings: 4-bit NF4 with double quantization, 8-bit, or none."""
    from transformers import BitsAndBytesConfig

    if quantization in (None, "none"):
        return None
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",  # serving loads NF4 too; fp4 here would train a different base
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(device),
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ModelError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")


def load_base_model(
    model_id: str,
    quantization: str | None = "nf4",
    *,
    device_map: str | dict[str, int | str] | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> PreTrainedModel:
    """The base causal LM, quantized as asked, on the GPU when there is one."""
    from transformers import AutoModelForCausalLM

    quiet_bitsandbytes()
    device = default_device()
    if device_map is None:
        device_map = {"": 0} if device == "cuda" else {"": "cpu"}
    model = _load(
        "weights",
        model_id,
        AutoModelForCausalLM.from_pretrained,
        quantization_config=quantization_config(quantization, device),
        dtype=compute_dtype(device),
        device_map=device_map,
        token=token,
        revision=revision,
    )
    return model


def keep_training_layout(model: torch.nn.Module) -> int:
    """Keep every 4-bit weight in the layout training computes gradients with, evaluations included.

    On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for fast inference the first time
    its layer runs in eval mode without gradients, and never packs it back: the gradients that flow
    through a repacked weight are wrong. A model that evaluates and then trains must never repack.
    Returns how many 4-bit layers were pinned.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    pinned = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                # The inverse repacking is only approximate for double-quantized weights.
                raise ModelError("a 4-bit layer was already repacked for inference; load the base model again")
            module.support_avx512bf16_for_cpu = False
            pinned += 1
    return pinned
