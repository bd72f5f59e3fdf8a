"""TRL's SFTTrainer on padding-free batches, with the LM head and loss on the trained tokens only.

Completion-only training supervises a few hundred answer tokens after prompts of up to
thousands; projecting every prompt position onto the vocabulary (which TRL's fused head does
on the CPU) and scoring it is most of the head's work, for positions whose loss is ignored.
The loss is the same sum over trained tokens divided by the same count as TRL's, so the
gradients are the same; evaluation, early stopping, checkpoints and resuming are the Trainer's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jnreg.core.training.packing import packed_forward
from jnreg.core.training.trainer import RunTrainer

if TYPE_CHECKING:
    import torch


class PackedSFTTrainer(RunTrainer):
    """SFTTrainer whose batches come from ``PackedCollator`` and whose loss skips ignored positions."""

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        import torch
        import torch.nn.functional as F

        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        outputs, logits, wanted = _trained_logits(model, inputs)
        count = wanted.numel() if num_items_in_batch is None else num_items_in_batch
        loss = F.cross_entropy(logits, wanted, reduction="sum") / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # As in Trainer.compute_loss: the count covers every process, and DDP averages gradients.
            loss = loss * self.accelerator.num_processes

        with torch.no_grad():
            log_probs = torch.log_softmax(logits, dim=-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1).sum()
            correct = (logits.argmax(-1) == wanted).sum()
            valid = torch.as_tensor(wanted.numel(), device=logits.device)
        gather = self.accelerator.gather_for_metrics
        valid = gather(valid).sum()
        entropy, correct = gather(entropy).sum(), gather(correct).sum()
        self._metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            from jnreg.core.training.sharding import blank_rows

            tokens = torch.as_tensor(labels.numel(), device=labels.device) - blank_rows(inputs).to(labels.device)
            self._total_train_tokens += int(gather(tokens).sum().item())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    def loss_sum(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
        import torch
        import torch.nn.functional as F

        _, logits, wanted = _trained_logits(model, inputs)
        return F.cross_entropy(logits, wanted, reduction="sum"), torch.as_tensor(wanted.numel(), device=logits.device)


def _trained_logits(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The model's outputs, its logits at the positions whose next token is trained, and those tokens."""
    import torch

    inputs = {k: v for k, v in inputs.items() if k != "rows"}
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    trained = targets != -100
    # Position t predicts token t + 1: keep the hidden states whose next token is trained.
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = trained
    with packed_forward():
        outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
    return outputs, logits, targets[trained]
