"""training_log.json: the Trainer's log at every logging step, kept beside the adapter and published with it."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from jnreg.errors import ConfigError
from jnreg.schemas import validate

# What each logging step keeps from the Trainer's log; everything else there is for the Trainer itself.
KEPT = ("loss", "eval_loss", "learning_rate", "grad_norm")


def _entry(logs: dict[str, Any], step: int, epoch: Any) -> dict[str, Any] | None:
    entry: dict[str, Any] = {"step": int(step), "epoch": float(epoch) if epoch is not None else None}
    entry.update({key: float(logs[key]) for key in KEPT if isinstance(logs.get(key), (int, float))})
    return entry if len(entry) > 2 else None


class StepLog(TrainerCallback):
    """Keeps each logging step's loss, eval loss, learning rate, and the tokens/s since the step before.

    Tokens come from the Trainer's ``num_input_tokens_seen``, the count the summary's ``input_tokens``
    and ``tokens_per_second`` are made of, so the steps add up to the summary's figures.
    """

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.started: float | None = None
        self.first_tokens = 0
        self.last_time = 0.0
        self.last_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A resumed run's state holds the log of the steps before its checkpoint.
        before = [e for e in state.log_history if "step" in e and e["step"] <= state.global_step]
        seen = {(entry["step"], "eval_loss" in entry) for entry in self.steps}
        for logs in before:
            entry = _entry(logs, logs["step"], logs.get("epoch"))
            if entry is not None and (entry["step"], "eval_loss" in entry) not in seen:
                self.steps.append(entry)
        self.steps.sort(key=lambda e: e["step"])
        self.started = self.last_time = time.perf_counter()
        self.first_tokens = self.last_tokens = state.num_input_tokens_seen or 0

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        entry = _entry(logs, state.global_step, state.epoch)
        if entry is None:
            return
        if self.started is not None:
            clock, tokens = time.perf_counter(), state.num_input_tokens_seen or 0
            entry["elapsed_s"] = round(clock - self.started, 3)
            entry["input_tokens"] = int(tokens - self.first_tokens)
            if "loss" in entry and clock > self.last_time:
                entry["tokens_per_second"] = round((tokens - self.last_tokens) / (clock - self.last_time), 2)
                self.last_time, self.last_tokens = clock, tokens
        self.steps.append(entry)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = None  # an evaluation after training is logged, but is no training step's

    def document(self, agent: str, logging_steps: int) -> dict[str, Any]:
        document = {"schema_version": 1, "agent": agent, "logging_steps": logging_steps, "steps": self.steps}
        validate("training_log", document, "training log", error=ConfigError)
        return document
