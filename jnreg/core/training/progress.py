"""Training progress: one live bar on a terminal, plain lines anywhere else."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

if TYPE_CHECKING:
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

Echo = Callable[[str], None]


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class TrainingDisplay(TrainerCallback):
    """Shows training as it goes, in the form the output stream can take.

    On a terminal: one live bar (step, loss, learning rate, tokens/s, time left) that also shows an
    evaluation in progress, with each logging step's line printed above it. Anywhere else (a log
    file, a pipe, CI): one plain line per logging step, never a carriage return or escape code.
    """

    def __init__(self, echo: Echo, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.echo = echo
        self.stream = stream or sys.stderr
        self.live = _is_terminal(self.stream) if live is None else live
        self.bar: tqdm | None = None
        self.started = 0.0
        self.first_step = 0
        self.first_tokens = 0
        self.last: dict[str, float] = {}
        self.eval_batches = 0

    @classmethod
    def install(cls, trainer: Trainer, echo: Echo, **options: Any) -> TrainingDisplay:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        display = cls(echo, **options)
        trainer.add_callback(display)
        return display

    # What the run has done so far.

    def tokens_per_second(self, state: TrainerState) -> float | None:
        elapsed = time.monotonic() - self.started
        tokens = (state.num_input_tokens_seen or 0) - self.first_tokens
        return tokens / elapsed if elapsed > 0 and tokens > 0 else None

    def seconds_left(self, state: TrainerState) -> float | None:
        done = state.global_step - self.first_step
        if done <= 0 or not state.max_steps:
            return None
        return (time.monotonic() - self.started) / done * (state.max_steps - state.global_step)

    def status(self, state: TrainerState) -> list[str]:
        parts = []
        if "loss" in self.last:
            parts.append(f"loss {self.last['loss']:.4f}")
        if "learning_rate" in self.last:
            parts.append(f"lr {self.last['learning_rate']:.1e}")
        rate = self.tokens_per_second(state)
        if rate is not None:
            parts.append(f"{rate:,.0f} tok/s")
        return parts

    def say(self, line: str) -> None:
        if self.bar is not None:
            with self.bar.external_write_mode():
                self.echo(line)
        else:
            self.echo(line)

    # Trainer events.

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        self.started = time.monotonic()
        self.first_step = state.global_step
        self.first_tokens = state.num_input_tokens_seen or 0
        if self.live:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
                # The status goes in ``desc``: tqdm puts a comma before ``postfix``.
                bar_format="training {n_fmt}/{total_fmt} |{bar}| {desc} [{elapsed}<{remaining}]",
            )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_description_str("  ".join(self.status(state)), refresh=True)

    def on_prediction_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        eval_dataloader: DataLoader | None = None,
        **kwargs: Any,
    ):
        self.eval_batches += 1
        if self.bar is not None:
            total = len(eval_dataloader) if eval_dataloader is not None else "?"
            self.bar.set_description_str(f"evaluating {self.eval_batches}/{total}", refresh=True)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.eval_batches = 0

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs or not self.started:
            return  # an evaluation outside training reports its own result
        self.last.update({k: float(logs[k]) for k in ("loss", "learning_rate") if k in logs})
        if not {"loss", "eval_loss"} & logs.keys():
            return
        parts = [f"step {state.global_step}/{state.max_steps}"]
        if "eval_loss" in logs:
            parts.append(f"eval_loss {logs['eval_loss']:.4f}")
        else:
            parts.extend(self.status(state))
            left = self.seconds_left(state)
            parts.append(f"elapsed {clock(time.monotonic() - self.started)}")
            if left is not None:
                parts.append(f"left {clock(left)}")
        self.say("  ".join(parts))
        if self.bar is not None:
            self.bar.set_description_str("  ".join(self.status(state)), refresh=True)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.started = 0.0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
