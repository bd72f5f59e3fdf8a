"""Training-step cost of padding each batch to its longest row (jnreg) vs to max_seq_length.

The first JustNews trainer padded every row to 2048 tokens. Both variants run here, side by
side, on the same rows, model and optimizer settings (the built-in tiny model, NF4 + LoRA on
this machine's device); the result is a ratio, not an absolute time.

    python bench/bench_padding.py [--agent synthesizer] [--steps 6] [--max-seq-length 2048] [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def main() -> None:
    parser = benchlib.parser(__file__, __doc__)
    parser.add_argument("--agent", default="synthesizer")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (6; --quick: 3)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=2048)
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.quick else 6)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)

    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from jnreg.core.host.plugins import get_host
    from jnreg.core.training import engine
    from jnreg.core.training.config import build_config

    agent = get_host().get(args.agent)
    with tempfile.TemporaryDirectory() as out:
        config = build_config(
            agent.spec,
            {},
            {
                "base_model": "jnreg:tiny-mistral",
                "output_dir": out,
                "train_batch_size": args.batch_size,
                "max_seq_length": args.max_seq_length,
                "eval_fraction": 0.0,
            },
        )
        ready = engine.setup(config, agent, echo=lambda _: None)
        trainer = ready.trainer
        trainer.create_optimizer_and_scheduler(num_training_steps=10 * args.steps)
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which is not run here
        rows = [ready.trainer.train_dataset[i] for i in range(len(ready.trainer.train_dataset))]
        batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)][: args.steps]
        pad = ready.tokenizer.pad_token_id
        collators = {
            "jnreg (pad to longest in batch)": DataCollatorForLanguageModeling(pad_token_id=pad),
            f"pad to {args.max_seq_length}": DataCollatorForLanguageModeling(
                pad_token_id=pad, pad_to_multiple_of=args.max_seq_length
            ),
        }
        model = trainer.model
        model.train()
        results = {}
        for name, collate in collators.items():
            times, tokens = [], 0
            trainer.training_step(model, collate(batches[0]))  # warm-up
            for batch in batches:
                inputs = collate(batch)
                tokens += inputs["input_ids"].numel()
                start = time.perf_counter()
                trainer.training_step(model, inputs)
                times.append(time.perf_counter() - start)
            results[name] = {"median_step_s": statistics.median(times), "tokens_per_step": tokens / len(batches)}
    (base_name, base), (fixed_name, fixed) = results.items()
    figures = [
        benchlib.figure(
            "training step, median (pad each batch to its longest row)",
            base["median_step_s"],
            "s",
            better="lower",
            alternative=fixed_name,
            alternative_value=fixed["median_step_s"],
        ),
        benchlib.figure(
            "tokens per step, padding included",
            base["tokens_per_step"],
            "tokens",
            better="lower",
            alternative=fixed_name,
            alternative_value=fixed["tokens_per_step"],
        ),
    ]
    settings = {"device": ready.device, "agent": args.agent, "batch_size": args.batch_size, "steps": len(batches)}
    benchlib.write(__file__, args.out, figures, settings=settings, results=results)


if __name__ == "__main__":
    main()
