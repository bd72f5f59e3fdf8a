"""QLoRA on a GPU: jnreg against TRL's SFTTrainer on the Mistral-7B-Instruct-v0.3 architecture.

The model is built from Mistral-7B-Instruct-v0.3's configuration with random weights (nothing
is downloaded), written once as bf16 safetensors and loaded by both sides in NF4 with double
quantization, LoRA r 16 on q/k/v/o, rows of 2048 tokens, batch 1 x accumulation 4. Each side
runs in its own subprocess and reports training tokens/s, peak GPU memory (torch's allocator)
and model FLOPs utilisation against the card's dense bf16 peak (6 x parameters per token plus
attention, TRL's convention). Then each side's longest row that trains in 24 GB is searched
for, with the allocator capped at 24 GiB.

    python bench/gpu_qlora.py [--steps 8] [--out bench/results/gpu_qlora.json]
    python bench/gpu_qlora.py --dry     # no GPU needed: a tiny config on the CPU, to check the script

Without a GPU (and without --dry) it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

GiB = 1024**3
# Mistral-7B-Instruct-v0.3's config.json, without the weights.
MISTRAL_7B_V03 = {
    "vocab_size": 32768,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-5,
    "sliding_window": None,
    "tie_word_embeddings": False,
}
TINY = {**MISTRAL_7B_V03, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 4096}  # fmt: skip
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; matched against the device name.
BF16_PEAK = [
    ("H200", 989.4e12),
    ("H100 PCIe", 756.5e12),
    ("H100", 989.4e12),
    ("A100", 312e12),
    ("L40S", 362.05e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12),
]
LORA = {"adapter_r": 16, "adapter_alpha": 32, "adapter_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}  # fmt: skip
SYSTEM_SHARE = 0.9  # of each row's tokens are prompt; the rest is the trained answer


def bf16_peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK if key in name), None)


def flops_per_token(config: dict, seq_len: int) -> float:
    """Training FLOPs a token: 3 x the forward (matmuls of every layer, the attention scores, the LM head)."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or h // heads
    attention = 2 * h * (heads + 2 * kv_heads) * head_dim + 2 * heads * head_dim * h + 4 * heads * head_dim * seq_len
    mlp = 2 * 3 * h * config["intermediate_size"]
    return 3 * (layers * (attention + mlp) + 2 * vocab * h)


def write_model(directory: Path, config: dict, dtype_name: str) -> None:
    """Random weights in the architecture's shapes, written as safetensors with the built-in tokenizer."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    from jnreg.core.models.tiny import ensure_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model())
    dtype = getattr(torch, dtype_name)
    model_config = MistralConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    with torch.device("meta"):
        model = MistralForCausalLM(model_config)
    model = model.to_empty(device="cpu").to(dtype)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(directory, safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(directory)


def rows(count: int, seq_len: int, vocab: int) -> list[dict]:
    """Token rows of exactly ``seq_len`` tokens, the last ``1 - SYSTEM_SHARE`` of them trained, EOS last."""
    rng = random.Random(7)
    out = []
    for _ in range(count):
        ids = [1] + [rng.randrange(6, vocab) for _ in range(seq_len - 2)] + [2]
        prompt = int(seq_len * SYSTEM_SHARE)
        out.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * (seq_len - prompt)})
    return out


def side(which: str, work: Path, seq_len: int, steps: int, cap_bytes: int | None, dry: bool) -> dict:
    """One side's training run (or, with ``cap_bytes``, one step under that memory cap)."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from datasets import Dataset

    cuda = torch.cuda.is_available()
    if cap_bytes and cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total))
    config = json.loads((work / "model" / "config.json").read_text())
    data = Dataset.from_list(rows(steps * 4, seq_len, config["vocab_size"]))
    if which == "jnreg":
        trainer = _jnreg_trainer(work, data, seq_len, steps, cap_bytes)
    else:
        trainer = _peer_trainer(work, data, seq_len, steps)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        trainer.train()
    except torch.OutOfMemoryError:
        return {"fits": False}
    if cuda:
        torch.cuda.synchronize()
    runtime = time.perf_counter() - start
    tokens = trainer.state.global_step * 4 * seq_len
    return {
        "fits": True,
        "runtime_s": runtime,
        "tokens_per_s": tokens / runtime,
        "peak_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
        "checkpointing": bool(trainer.args.gradient_checkpointing),
    }


def _common_args(work: Path, steps: int) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "output_dir": str(work / "out"),
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 4,
        "max_steps": steps,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "bf16": cuda,
        "use_cpu": not cuda,
        "seed": 42,
        "logging_steps": 1000,
    }


def _jnreg_trainer(work: Path, data, seq_len: int, steps: int, cap_bytes: int | None):
    """jnreg's trainer as ``jnreg train`` builds it, on these token rows."""
    from jnreg.core.data import cache as datacache
    from jnreg.core.data import prepare as prepare_mod
    from jnreg.core.data.rows import Example
    from jnreg.core.training import engine, preflight
    from jnreg.core.training.config import TrainConfig

    if cap_bytes:
        # Decide gradient checkpointing as a card of this size would.
        check = preflight.check_environment

        def capped(quantization: str):
            report = check(quantization)
            report.gpu_bytes = cap_bytes
            return report

        engine.preflight.check_environment = capped  # type: ignore[attr-defined]
    token_rows = [dict(r) for r in data]
    example = Example("bench:1", prompt="x", response="y")

    def prepared(config, agent, tokenizer):
        tokenized = datacache.tokenized_set(work / "rows.arrow", token_rows)
        checked = datacache.CheckedStream(None, len(token_rows))
        renderer = prepare_mod.data_mod.Renderer(tokenizer, agent.spec.template, None)
        return prepare_mod.PreparedData("bench rows", checked, tokenized, None, renderer, example)

    engine.prepare_data = prepared  # the rows are already tokens
    from jnreg.core.host.plugins import get_host

    agent = get_host().get("synthesizer")
    config = TrainConfig(
        agent="synthesizer",
        adapter_name="bench",
        base_model=str(work / "model"),
        output_dir=str(work / "out"),
        max_seq_length=seq_len,
        max_steps=steps,
        train_batch_size=1,
        gradient_accumulation=4,
        learning_rate=2e-4,
        lr_scheduler="linear",
        warmup_ratio=0.0,
        eval_fraction=0.0,
        save_steps=10_000,
        logging_steps=1000,
        **{k: tuple(v) if isinstance(v, list) else v for k, v in LORA.items()},
    )
    ready = engine.setup(config, agent, echo=lambda _line: None)
    ready.trainer.args.disable_tqdm = True
    return ready.trainer


def _peer_trainer(work: Path, data, seq_len: int, steps: int):
    """TRL's SFTTrainer as its docs show it, on the same token rows."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    compute = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        work / "model",
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        ),
        dtype=compute,
        device_map={"": 0} if cuda else {"": "cpu"},
    )
    lora = LoraConfig(
        r=LORA["adapter_r"],
        lora_alpha=LORA["adapter_alpha"],
        lora_dropout=LORA["adapter_dropout"],
        target_modules=LORA["target_modules"],
        task_type="CAUSAL_LM",
    )
    args = SFTConfig(max_length=seq_len, **_common_args(work, steps))
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(work / "model"),
        peft_config=lora,
    )


def run_side(which: str, work: Path, seq_len: int, steps: int, cap: int | None, dry: bool) -> dict:
    """One side in its own process, so memory and compiled state never carry over."""
    argv = [sys.executable, __file__, "--side", which, "--work", str(work), "--seq-len", str(seq_len),
            "--steps", str(steps)] + (["--cap", str(cap)] if cap else []) + (["--dry"] if dry else [])  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        if "OutOfMemoryError" in done.stderr or "out of memory" in done.stderr:
            return {"fits": False}
        sys.exit(f"{which} failed at {seq_len} tokens:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def longest_fit(which: str, work: Path, dry: bool, limit: int) -> int:
    """The longest row (a multiple of 1024) that trains one step in 24 GiB."""
    low, high = 0, None
    length = 2048
    while high is None or high - low > 1024:
        result = run_side(which, work, length, 1, 24 * GiB, dry)
        if result.get("fits"):
            low = length
            if length >= limit:
                break
            length = length * 2 if high is None else (low + high) // 2 // 1024 * 1024
        else:
            high = length
            length = (low + high) // 2 // 1024 * 1024
            if length <= low:
                break
    return low


def gib(count: int | None) -> float | None:
    return count / GiB if count else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="Optimizer steps timed (batch 1 x accumulation 4).")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument(
        "--dry", action="store_true", help="A tiny config on the CPU: checks the script, measures nothing."
    )
    parser.add_argument("--no-fit", action="store_true", help="Skip the longest-row-in-24-GB search.")
    parser.add_argument("--out", type=Path, default=Path("bench/results") / f"{Path(__file__).stem}.json")
    parser.add_argument("--side", choices=("jnreg", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print("RESULT " + json.dumps(side(args.side, args.work, args.seq_len, args.steps, args.cap, args.dry)))
        return

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry:
        print("bench/gpu_qlora.py needs a CUDA GPU (none found); use --dry to check it on the CPU", file=sys.stderr)
        sys.exit(2)
    device = torch.cuda.get_device_name(0) if cuda else "cpu (--dry)"
    config = TINY if args.dry else MISTRAL_7B_V03
    seq_len = 256 if args.dry else args.seq_len
    steps = 2 if args.dry else args.steps
    with tempfile.TemporaryDirectory(prefix="jnreg-gpu-qlora-") as tmp:
        work = Path(tmp)
        write_model(work / "model", config, "float32" if args.dry else "bfloat16")
        mine = run_side("jnreg", work, seq_len, steps, None, args.dry)
        theirs = run_side("peer", work, seq_len, steps, None, args.dry)
        fits = None
        if cuda and not args.no_fit:
            fits = {which: longest_fit(which, work, args.dry, 32768) for which in ("jnreg", "peer")}

    peak = bf16_peak(device) if cuda else None
    per_token = flops_per_token(config, seq_len)
    mfu = {k: (v["tokens_per_s"] * per_token / peak if peak else None) for k, v in (("jnreg", mine), ("peer", theirs))}
    trl = "TRL SFTTrainer"
    figures = [
        benchlib.figure(f"training tokens/s at {seq_len} tokens", mine["tokens_per_s"], "tokens/s", better="higher",
                        alternative=trl, alternative_value=theirs["tokens_per_s"], target=">= 2x the peer",
                        met=None if args.dry else mine["tokens_per_s"] >= 2 * theirs["tokens_per_s"]),
        benchlib.figure("peak GPU memory", gib(mine["peak_bytes"]), "GiB", better="lower", alternative=trl,
                        alternative_value=gib(theirs["peak_bytes"]), target="<= 0.5x the peer",
                        met=None if not cuda else mine["peak_bytes"] <= 0.5 * theirs["peak_bytes"]),
        benchlib.figure("MFU vs the device's dense bf16 peak", mfu["jnreg"], "fraction", better="higher",
                        alternative=trl, alternative_value=mfu["peer"]),
    ]  # fmt: skip
    if fits:
        figures.append(
            benchlib.figure(
                "longest row that trains in 24 GiB",
                fits["jnreg"],
                "tokens",
                better="higher",
                alternative=trl,
                alternative_value=fits["peer"],
            )
        )
    report = {
        "benchmark": Path(__file__).stem,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "device": device},
        "dry": args.dry,
        "gradient_checkpointing": {"jnreg": mine.get("checkpointing"), "peer": theirs.get("checkpointing")},
        "figures": figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.machine()


if __name__ == "__main__":
    main()
