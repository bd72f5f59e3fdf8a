"""The built-in base model: a few-MB MistralForCausalLM with a real tokenizer, built locally on first use.

Weights come from a fixed seed and the byte-level BPE tokenizer is trained on the built-in agents'
sample data, so two machines build the same model and nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

SEED = 1234
VOCAB_SIZE = 4096
# Every quantized projection's output size is a multiple of 32, which bitsandbytes' packed CPU
# format in eval mode requires.
ARCHITECTURE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rope_theta": 1_000_000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]"]
# Mistral-Instruct v0.3's layout: the system prompt opens the final user turn only (so a chat
# that ends with the answer drops it, as the real template does), the assistant turn is
# " answer</s>", and the generation prompt ends right after [/INST].
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] %}"
    "{% elif message['role'] == 'user' %}[INST] "
    "{% if loop.last and ns.system %}{{ ns.system }}\n\n{% endif %}"
    "{{ message['content'] }}[/INST]"
    "{% elif message['role'] == 'assistant' %} {{ message['content'] | trim }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
)
RECIPE_VERSION = 3
# The built base is taught the sample data's article text (never the answers) with a short full
# training run, so that it knows the language of the news as a real base does; an adapter then has
# only the agent's task and JSON to learn, and the quick start shows it learning.
PRETRAIN = {"steps": 120, "batch": 8, "length": 128, "learning_rate": 3e-3}


def _sample_rows() -> list[dict]:
    data = Path(str(resources.files("jnreg.plugins"))) / "data"
    return [
        json.loads(line)
        for path in sorted(data.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def _corpus() -> list[str]:
    return [str(value) for row in _sample_rows() for value in row.values()]


def _articles() -> list[str]:
    """What the base is taught: the prompts' text, without the agents' answers."""
    return [str(row[key]) for row in _sample_rows() for key in ("prompt", "text") if key in row]


def _recipe_digest(corpus: list[str]) -> str:
    recipe = {
        "version": RECIPE_VERSION,
        "seed": SEED,
        "vocab": VOCAB_SIZE,
        "arch": ARCHITECTURE,
        "special": SPECIAL_TOKENS,
        "template": CHAT_TEMPLATE,
        "pretrain": PRETRAIN,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for text in corpus:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("JNREG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jnreg"
    )
    return Path(root) / "models"


def ensure_tiny_model() -> Path:
    """The built model's directory, building it (once, under a lock) when missing."""
    from filelock import FileLock

    corpus = _corpus()
    target = cache_dir() / f"tiny-mistral-{_recipe_digest(corpus)}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=600):
        if (target / "config.json").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
        try:
            build(staging, corpus)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["[INST]", "[/INST]"],
        model_max_length=ARCHITECTURE["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(directory: Path, corpus: list[str]) -> None:
    """Write the tiny model and its tokenizer into ``directory``."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = build_tokenizer(corpus)
    config = MistralConfig(
        vocab_size=VOCAB_SIZE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **ARCHITECTURE,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        model = MistralForCausalLM(config)
        _teach(model, tokenizer, _articles())
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a build inside a training run must not break its display
    try:
        model.save_pretrained(directory, safe_serialization=True)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    tokenizer.save_pretrained(directory)


def _teach(model, tokenizer, texts: list[str]) -> None:
    """Train every weight of ``model`` for a few steps on ``texts``, packed into fixed-length windows."""
    import torch

    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id])
    length, batch = PRETRAIN["length"], PRETRAIN["batch"]
    windows = torch.tensor(stream[: len(stream) // length * length]).view(-1, length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["learning_rate"], weight_decay=0.0)
    order = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(PRETRAIN["steps"]):
        rows = windows[torch.randint(len(windows), (batch,), generator=order)]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
