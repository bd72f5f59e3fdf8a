"""Training progress: transformers' progress bar, with one readable line per logging step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import ProgressCallback


class LossLines(ProgressCallback):
    """The usual progress bar; logs become ``step 10/40  loss 2.3141  lr 1.8e-04`` lines."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        super().__init__()
        self.echo = echo

    @classmethod
    def install(cls, trainer: Any, echo: Callable[[str], None]) -> None:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(cls(echo))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or not ({"loss", "eval_loss"} & logs.keys()):
            return
        parts = [f"step {state.global_step}/{state.max_steps}"]
        for key, fmt in (("loss", ".4f"), ("eval_loss", ".4f"), ("learning_rate", ".1e"), ("epoch", ".2f")):
            if key in logs:
                parts.append(f"{key.replace('learning_rate', 'lr')} {logs[key]:{fmt}}")
        line = "  ".join(parts)
        if self.training_bar is not None:
            # Cleared and redrawn around the line; tqdm.write would send it to stdout, which --json keeps for JSON.
            with self.training_bar.external_write_mode():
                self.echo(line)
        else:
            self.echo(line)
