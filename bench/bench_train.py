"""Training speed: the whole ``jnreg train`` command against TRL's SFTTrainer as its docs show it.

Both sides train the same rows (deterministic news-like articles, prompts skewed from about 50
to 1,500 tokens, answers of 20 to 300) on the same model (a Mistral-architecture model built
here from a seed: 4 layers, hidden 256, NF4 with double quantization), with the same LoRA
(r 16 on q/k/v/o), batch 4 x accumulation 2, one epoch, the same learning rate, linear
schedule without warmup, fp32 on the CPU, and the same held-out rows. The peer keeps TRL's
other defaults (gradient checkpointing on, its collator, its fused LM head). Each side runs in
its own subprocess, so each peak RSS is its own; the two run at the same time (``--sequential``
runs one after the other), so both share whatever load the machine has.

    python bench/bench_train.py [--quick] [--rows 256] [--out bench/results/bench_train.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

AGENT = "synthesizer"
MODEL = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
    "rope_theta": 1_000_000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
}
SETTINGS = {
    "train_batch_size": 4,
    "eval_batch_size": 4,
    "gradient_accumulation": 2,
    "epochs": 1.0,
    "learning_rate": 2e-4,
    "lr_scheduler": "linear",
    "warmup_ratio": 0.0,
    "weight_decay": 0.0,
    "adapter_r": 16,
    "adapter_alpha": 32,
    "adapter_dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "max_seq_length": 2048,
    "seed": 42,
    "logging_steps": 10,
    "save_steps": 10_000,
}

PLACES = ["Ostrel", "Harwick", "Lindqvist Bay", "Marrowdale", "Port Ennis", "Valcourt", "Sundry Cross", "Kelmouth"]
PEOPLE = ["Nadia Brenner", "Tomas Okafor", "Ruth Vallance", "Imre Szabo", "Leila Haddad", "Owen Pryce", "Mei Tanaka"]
BODIES = ["the district council", "the regional health board", "the transport authority", "the water utility",
          "the university", "the port operator", "the police service", "the housing association"]  # fmt: skip
TOPICS = ["budget", "flood defences", "bus timetable", "hospital waiting lists", "school places", "rent controls",
          "harbour dredging", "cycle lanes", "library hours", "air quality"]  # fmt: skip
VERBS = ["approved", "delayed", "rejected", "announced", "reviewed", "expanded", "cut", "questioned"]


def _sentence(rng: random.Random) -> str:
    person, place, body, topic = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(BODIES), rng.choice(TOPICS)
    number, day = rng.randint(2, 980), rng.choice(["Monday", "Tuesday", "Friday"])
    forms = [
        f"{body.capitalize()} in {place} {rng.choice(VERBS)} the {topic} plan on {day}.",
        f'"We have {number} cases still open," said {person}, who leads the {topic} review for {body}.',
        f"Figures published by {body} show {number} residents were affected, up from {number // 2} a year ago.",
        f"Critics in {place} said the {topic} decision came without consultation and would cost {number} jobs.",
        f"{person} told reporters the {topic} changes would be reviewed again in {rng.randint(2, 11)} months.",
    ]  # fmt: skip
    return rng.choice(forms)


def _text(rng: random.Random, tokenizer, tokens: int) -> str:
    parts: list[str] = []
    while True:
        parts.append(_sentence(rng))
        if len(parts) % 6 == 0:
            parts[-1] += "\n\n"
        text = " ".join(parts)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= tokens:
            return text


def make_rows(count: int, tokenizer, seed: int = 7) -> list[dict[str, str]]:
    """Articles with a log-normal length (median ~180 tokens, clipped to 50..1500) and JSON answers of 20..300."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        prompt_tokens = int(min(1500, max(50, rng.lognormvariate(math.log(180), 0.9))))
        answer_tokens = rng.randint(20, 300)
        headline = f"# {rng.choice(PLACES)}: {rng.choice(TOPICS)} {rng.choice(VERBS)}"
        article = f"URL: https://news.example.com/{index}\n\n{headline}\n\n" + _text(rng, tokenizer, prompt_tokens)
        summary = _text(rng, tokenizer, max(8, answer_tokens - 25))
        answer = {
            "summary": summary,
            "narrative_voice": "neutral",
            "key_points": [_sentence(rng)],
            "cautions": [],
            "pull_quotes": [],
        }
        rows.append({"prompt": article, "response": json.dumps(answer)})
    return rows


def build_model(directory: Path) -> None:
    """A Mistral-architecture model from a fixed seed, with the built-in model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    from jnreg.core.models.tiny import ensure_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model())
    config = MistralConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL,
    )
    torch.manual_seed(1234)
    MistralForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def run_measured(argv: list[str], threads: int | None = None) -> dict:
    """Run a command offline to completion: its wall clock and its own peak RSS (``benchlib.run_child``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return benchlib.run_child(argv, env=env)


def peer(work: Path) -> None:
    """TRL's SFTTrainer on the same rows, as its docs show it: prompt-completion data and a peft_config."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from jnreg.plugins.synthesizer import SYSTEM

    def conversational(path: Path) -> Dataset:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return Dataset.from_list(
            [
                {
                    # Mistral's template puts the system prompt into the final user turn only, so a system
                    # message would vanish once the answer follows and TRL would train on the prompt: the
                    # user turn carries it, which renders the very tokens jnreg trains on.
                    "prompt": [{"role": "user", "content": f"{SYSTEM}\n\n{r['prompt']}"}],
                    "completion": [{"role": "assistant", "content": r["response"]}],
                }
                for r in rows
            ]
        )

    s = SETTINGS
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_pretrained(
        work / "model",
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        ),
        dtype=torch.float32,
        device_map={"": "cpu"},
    )
    args = SFTConfig(
        output_dir=str(work / "peer"),
        per_device_train_batch_size=s["train_batch_size"],
        per_device_eval_batch_size=s["eval_batch_size"],
        gradient_accumulation_steps=s["gradient_accumulation"],
        num_train_epochs=s["epochs"],
        learning_rate=s["learning_rate"],
        lr_scheduler_type=s["lr_scheduler"],
        warmup_steps=s["warmup_ratio"],
        weight_decay=s["weight_decay"],
        max_length=s["max_seq_length"],
        logging_steps=s["logging_steps"],
        save_strategy="no",
        seed=s["seed"],
        bf16=False,  # jnreg trains in fp32 on the CPU
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=s["adapter_r"],
        lora_alpha=s["adapter_alpha"],
        lora_dropout=s["adapter_dropout"],
        target_modules=s["target_modules"],
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=conversational(work / "train.jsonl"),
        eval_dataset=conversational(work / "eval.jsonl"),
        processing_class=tokenizer,
        peft_config=lora,
    )
    supervised = sum(sum(1 for t in row["labels"][1:] if t != -100) for row in trainer.train_dataset)
    start = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - start
    eval_loss = trainer.evaluate()["eval_loss"]
    result = {"runtime_s": runtime, "supervised_tokens": supervised, "eval_loss": eval_loss}
    (work / "peer.json").write_text(json.dumps(result))


def main() -> None:
    parser = benchlib.parser(__file__, __doc__, quick="32 rows: a smoke run, not a measurement.")
    parser.add_argument("--rows", type=int, default=256, help="Training rows (another 10%% are held out).")
    parser.add_argument("--sequential", action="store_true", help="Run jnreg, then the peer (default: together).")
    parser.add_argument("--peer-in", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_in:
        peer(args.peer_in)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = 32 if args.quick else args.rows
    held_out = max(4, rows // 10)

    with tempfile.TemporaryDirectory(prefix="jnreg-bench-train-") as tmp:
        work = Path(tmp)
        build_model(work / "model")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(work / "model")
        data = make_rows(rows + held_out, tokenizer)
        for name, part in (("train", data[:rows]), ("eval", data[rows:])):
            (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        config = {
            **SETTINGS,
            "base_model": str(work / "model"),
            "train_files": [str(work / "train.jsonl")],
            "eval_files": [str(work / "eval.jsonl")],
            "output_dir": str(work / "jnreg"),
        }
        (work / "config.json").write_text(json.dumps(config))

        commands = {
            "jnreg": [sys.executable, "-m", "jnreg", "train", AGENT, "--config", str(work / "config.json")],
            "peer": [sys.executable, __file__, "--peer-in", str(work)],
        }
        if args.sequential:
            done = {side: run_measured(argv) for side, argv in commands.items()}
        else:
            # Side by side, so both see the same load from whatever else runs on the machine.
            with ThreadPoolExecutor(2) as pool:
                # Half the cores each: oversubscribed OpenMP threads spin and skew the comparison.
                threads = max(1, (os.cpu_count() or 2) // 2)
                futures = {side: pool.submit(run_measured, argv, threads) for side, argv in commands.items()}
                done = {side: future.result() for side, future in futures.items()}
        wall, jnreg_rss = done["jnreg"]["wall_s"], done["jnreg"]["peak_rss_bytes"]
        peer_rss = done["peer"]["peak_rss_bytes"]
        summary = json.loads((work / "jnreg" / "training_summary.json").read_text())
        theirs = json.loads((work / "peer.json").read_text())

    metrics, dataset = summary["metrics"], summary["dataset"]
    mine_tps = dataset["supervised_tokens"] * SETTINGS["epochs"] / metrics["runtime_s"]
    peer_tps = theirs["supervised_tokens"] * SETTINGS["epochs"] / theirs["runtime_s"]
    trl = "TRL SFTTrainer"
    peer_loop = f"{trl} trainer.train()"
    figures = [
        benchlib.figure("supervised tokens/s, training loop", mine_tps, "tokens/s", better="higher", alternative=trl,
                        alternative_value=peer_tps, target=">= 1.5x the peer", met=mine_tps >= 1.5 * peer_tps),
        benchlib.figure("whole jnreg train command vs the peer's trainer.train() alone", wall, "s", better="lower",
                        alternative=peer_loop, alternative_value=theirs["runtime_s"],
                        target="below the peer's training loop", met=wall < theirs["runtime_s"]),
        benchlib.figure("training loop", metrics["runtime_s"], "s", better="lower", alternative=peer_loop,
                        alternative_value=theirs["runtime_s"]),
        benchlib.figure("held-out eval loss after training", metrics["eval_loss"], "loss", better="lower",
                        alternative=trl, alternative_value=theirs["eval_loss"], target="equal (within 0.1%) or lower",
                        met=metrics["eval_loss"] <= theirs["eval_loss"] * 1.001),
        benchlib.figure("peak RSS", jnreg_rss / 2**20, "MiB", better="lower", alternative=trl,
                        alternative_value=peer_rss / 2**20, target="<= 1.1x the peer", met=jnreg_rss <= 1.1 * peer_rss),
        benchlib.figure("supervised tokens trained", dataset["supervised_tokens"], "tokens", better="higher",
                        alternative=trl, alternative_value=theirs["supervised_tokens"]),
    ]  # fmt: skip
    benchlib.write(
        __file__, args.out, figures, rows={"train": rows, "eval": held_out}, side_by_side=not args.sequential
    )


if __name__ == "__main__":
    main()
