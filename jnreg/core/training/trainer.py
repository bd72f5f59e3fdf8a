"""TRL's SFTTrainer with figures that are the whole run's, whatever the number of processes.

- Evaluation gives each held-out row to exactly one process and reduces the summed loss and
  the trained-token count across them, so the eval loss is the mean per trained token over
  the rows, each counted once (the Trainer's own loop pads an uneven split with repeated rows
  and averages batch means). It runs on the unwrapped replica, without the Trainer's
  ``accelerator.prepare_model(evaluation_mode=True)``: that marks the model prepared, and a
  ``train()`` after it then leaves the model out of DistributedDataParallel, so every process
  trained its own replica on its own rows and the gradients were never averaged.
- Training keeps the run's loss per optimizer step, reduced across the processes, in the
  Trainer state, so it is saved with every checkpoint and a resumed run reports the loss of
  all its steps.
- The newest checkpoint is never deleted, whatever ``save_total_limit`` and the best model.
- Over several processes, an epoch's last global batch is filled with a blank row, not with rows
  trained again (``sharding``), so N processes train the rows and count the tokens one does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trl import SFTTrainer

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from transformers.trainer_utils import EvalLoopOutput

TOTALS = "JnregRunTotals"  # the key of the run's totals in the Trainer state's saved callback states


class RunTrainer(SFTTrainer):
    """SFTTrainer whose eval loss counts each row once and whose train loss covers every step of the run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._step_loss: torch.Tensor | None = None
        # Over several processes the training set ends with a blank row (sharding); its index.
        self._blank: int | None = None
        if self.accelerator.num_processes > 1 and self.train_dataset is not None:
            from jnreg.core.training.sharding import with_blank_row

            tokenizer = self.processing_class
            token = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
            self._blank = len(self.train_dataset)
            self.train_dataset = with_blank_row(self.train_dataset, token)

    # Data.

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self._blank is not None and len(dataset) == self._blank + 1:
            dataset = dataset.select(range(self._blank))  # shuffle the real rows only
        return super()._get_train_sampler(dataset)

    def get_train_dataloader(self) -> Any:
        loader = super().get_train_dataloader()
        if self._blank is not None:
            from jnreg.core.training.sharding import fill_with_blanks

            fill_with_blanks(loader, self._blank)
        return loader

    def num_examples(self, dataloader: Any) -> int:
        found = super().num_examples(dataloader)
        return found - 1 if self._blank is not None and found == self._blank + 1 else found

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        if self._blank is None or "attention_mask" not in inputs:
            return super()._track_num_input_tokens(inputs)
        import torch

        from jnreg.core.training.sharding import blank_rows

        # As the Trainer counts with include_num_input_tokens_seen="non_padding", less the blank rows.
        tokens = inputs["attention_mask"].sum() - blank_rows(inputs)
        tokens = torch.as_tensor(tokens, device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += int(self.accelerator.gather(tokens).sum().item())
        return None

    # Training.

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        from torch.nn.parallel import DistributedDataParallel

        if self.accelerator.num_processes > 1 and not isinstance(model, DistributedDataParallel):
            raise RuntimeError("the model is not wrapped for data-parallel training; its gradients would not be shared")
        loss = super().training_step(model, inputs, num_items_in_batch)
        step = loss.detach().float()
        self._step_loss = step if self._step_loss is None else self._step_loss + step
        if self.accelerator.sync_gradients:
            mean = float(self.accelerator.reduce(self._step_loss, reduction="mean"))
            totals = self.run_totals()
            totals["loss_sum"] += mean
            totals["steps"] += 1
            self._step_loss = None
        return loss

    def run_totals(self) -> dict[str, Any]:
        """The run's summed step losses and step count, checkpointed with the Trainer state."""
        saved = self.state.stateful_callbacks
        return saved.setdefault(TOTALS, {"loss_sum": 0.0, "steps": 0})

    def run_train_loss(self) -> float | None:
        """The mean train loss over every optimizer step of the run, resumed runs included."""
        totals = self.run_totals()
        return totals["loss_sum"] / totals["steps"] if totals["steps"] else None

    def _finalize_training(self, *args: Any, **kwargs: Any) -> Any:
        # With save_total_limit 1 the Trainer deletes every checkpoint but the best one here; the newest,
        # the one --resume continues from, stays (rotation already keeps both the best and the newest).
        limit = self.args.save_total_limit
        self.args.save_total_limit = None if limit == 1 else limit
        try:
            return super()._finalize_training(*args, **kwargs)
        finally:
            self.args.save_total_limit = limit

    # Evaluation.

    def evaluation_loop(
        self,
        dataloader: DataLoader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        import torch
        from torch.utils.data import DataLoader
        from transformers.trainer_utils import EvalLoopOutput

        # The prepared loader's dataset and collator, already stripped of unused columns; its batches,
        # padded to split evenly, are not used.
        dataset, collate = dataloader.dataset, dataloader.collate_fn
        rows = len(dataset)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = list(range(rows * rank // world, rows * (rank + 1) // world))
        batches = [mine[i : i + self.args.eval_batch_size] for i in range(0, len(mine), self.args.eval_batch_size)]
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=0)
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        with torch.no_grad():
            for batch in loader:
                with self.compute_loss_context_manager():
                    loss_sum, count = self.loss_sum(model, self._prepare_inputs(batch))
                totals += torch.stack([loss_sum.double(), count.double()])
                self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        model.train(was_training)
        loss_sum, count = self.accelerator.reduce(totals, reduction="sum").tolist()
        metrics = {f"{metric_key_prefix}_loss": loss_sum / count if count else float("nan")}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=rows)

    def loss_sum(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
        """The summed loss over a padded batch's trained tokens, and how many there are."""
        import torch.nn.functional as F

        inputs = dict(inputs)
        labels = inputs.pop("labels")
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        targets = labels[:, 1:]
        total = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
        )
        return total, (targets != -100).sum()
