"""Data-parallel batches that split the training rows and never repeat one.

accelerate gives every process a full batch at every step. When the rows do not fill an epoch's
last global batch, it fills the gap with rows from the start of the epoch, which are then trained,
and counted, twice: the adapter and the figures of N processes differ from one process's. Here the
gap is filled with a blank row instead: one token, none of it trained, so it adds nothing to the
loss, to its gradient or to the trained-token count, while every process still takes part in every
step (DDP needs each one in every backward pass).

The blank row sits after the real rows in the training set; the sampler shuffles the real rows
only, so the rows of each optimizer step are the ones a single process trains in that step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from accelerate.data_loader import BatchSamplerShard

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

IGNORE = -100


def with_blank_row(dataset: Dataset, token_id: int) -> Dataset:
    """``dataset`` and one more row: ``token_id`` alone, not trained."""
    return dataset.add_item({"input_ids": [token_id], "labels": [IGNORE]})


def blank_rows(inputs: dict[str, Any]) -> torch.Tensor:
    """How many blank rows a collated batch holds. Every real row has at least two tokens (BOS or the
    prompt, then the answer and EOS), so a row of one token is a blank one."""
    if "rows" in inputs:  # packed: the lengths of the rows laid end to end
        return (inputs["rows"] == 1).sum()
    return (inputs["attention_mask"].sum(-1) == 1).sum()


class FilledWithBlanks(BatchSamplerShard):
    """``BatchSamplerShard`` whose last global batch is filled with the blank row, not earlier rows."""

    blank: int

    def _iter_with_no_split(self) -> Iterator[list[int]]:
        if self.drop_last or self.batch_size is None:
            yield from super()._iter_with_no_split()
            return
        group: list[list[int]] = []
        for batch in self.batch_sampler:
            group.append(batch)
            if len(group) == self.num_processes:
                yield self._filled(group[self.process_index])
                group = []
        if group:
            mine = group[self.process_index] if self.process_index < len(group) else []
            yield self._filled(mine)

    def _filled(self, batch: list[int]) -> list[int]:
        return batch + [self.blank] * (self.batch_size - len(batch))


def fill_with_blanks(loader: Any, blank: int) -> None:
    """Make a prepared data-parallel loader fill its last global batch with the row at index ``blank``."""
    shard = loader.batch_sampler
    if type(shard) is not BatchSamplerShard or shard.split_batches:
        raise RuntimeError(f"unexpected data-parallel batch sampler {type(shard).__name__}")
    shard.__class__ = FilledWithBlanks
    shard.blank = blank
