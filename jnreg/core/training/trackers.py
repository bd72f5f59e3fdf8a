"""What the trackers get from jnreg on top of the Trainer's own integrations: the run's effective config."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class TrackerConfig(TrainerCallback):
    """Logs the effective config (``jnreg.<setting>``) to the trackers the Trainer opened a run in.

    Added after the Trainer's integrations, so their runs exist when training begins; the Trainer logs
    its own arguments and every logging step's metrics itself.
    """

    def __init__(self, document: dict[str, Any], trackers: tuple[str, ...]) -> None:
        self.trackers = trackers
        self.params = {
            f"jnreg.{key}": ",".join(map(str, value)) if isinstance(value, list) else value
            for key, value in sorted(document.items())
            if key != "schema_version"
        }

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if "mlflow" in self.trackers:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_params({key: "" if value is None else value for key, value in self.params.items()})
        if "wandb" in self.trackers:
            import wandb

            if wandb.run is not None:
                wandb.config.update(self.params, allow_val_change=True)
