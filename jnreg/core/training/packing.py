"""Padding-free batches: a batch's rows laid end to end in one sequence, with no attention across rows.

The rows of a batch become one row of ``sum(lengths)`` tokens. Each keeps its own positions
(0, 1, ...), and attention runs on each row's span on its own (``row_attention``), so a packed
row computes exactly what it computes alone, padding costs nothing and attention costs
``sum(L_i^2)`` rather than ``batch * max(L)^2``.

Resetting ``position_ids`` alone does not keep rows apart under transformers' sdpa, eager or
flex attention on the CPU; a dense block-diagonal mask does, but costs ``(sum L_i)^2``. The
row boundaries travel as ``cu_seq_lens_q``/``cu_seq_lens_k``, the names FlashAttention's varlen
kernels read, and ``row_attention`` splits on them.

A model with a sliding window would still get a dense ``(sum L_i)^2`` window mask once the
packed sequence outgrows the window. Rows are packed only when the window is at least the
longest row (``can_pack``), so the window never cuts inside a row, and attention within each
row is plain causal attention: a packed forward (``packed_forward``) builds no mask at all.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

ATTENTION = "jnreg_rows"
IGNORE = -100
_PACKED = contextvars.ContextVar("jnreg_packed_forward", default=False)


@contextlib.contextmanager
def packed_forward() -> Iterator[None]:
    """Run a model's forward on a packed batch: its attention masks are left to ``row_attention``."""
    token = _PACKED.set(True)
    try:
        yield
    finally:
        _PACKED.reset(token)


def row_mask(*args: Any, **kwargs: Any) -> Any:
    """No mask for a packed batch (each row attends causally within itself); sdpa's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    return None if _PACKED.get() else sdpa_mask(*args, **kwargs)


def row_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """sdpa on each packed row's span alone; a batch without row boundaries is plain sdpa."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.pop("cu_seq_lens_q", None)
    for name in ("cu_seq_lens_k", "max_length_q", "max_length_k"):
        kwargs.pop(name, None)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if query.shape[0] != 1 or attention_mask is not None:
        raise ValueError("packed rows need a batch of one sequence and no attention mask")
    cuts = bounds.tolist()
    pieces = [
        sdpa_attention_forward(
            module,
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            None,
            dropout,
            scaling,
            **kwargs,
        )[0]
        for start, end in zip(cuts[:-1], cuts[1:], strict=True)
        if end > start
    ]
    return torch.cat(pieces, dim=1), None


def install_row_attention(model: PreTrainedModel) -> None:
    """Make ``model`` attend within packed rows; padded batches (generation, a plain forward) stay sdpa."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, row_attention)
    AttentionMaskInterface.register(ATTENTION, row_mask)
    model.set_attn_implementation(ATTENTION)


def can_pack(model_config: PretrainedConfig, max_length: int) -> bool:
    """Rows are attended whole, so pack only when no row can be longer than the model's sliding window."""
    window = getattr(model_config, "sliding_window", None)
    return window is None or window >= max_length


class PackedCollator:
    """Rows with ``input_ids`` and ``labels`` into one padding-free sequence with row boundaries.

    Each row's first label is ignored, as the shift in an unpacked batch drops it, so no row
    learns from the token before it. ``rows`` comes first: it is what the Trainer counts as
    the batch size when it averages evaluation losses over batches.
    """

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        lengths = [len(example["input_ids"]) for example in examples]
        input_ids = torch.tensor([t for example in examples for t in example["input_ids"]], dtype=torch.long)
        labels = torch.tensor(
            [t for example in examples for t in example.get("labels", example["input_ids"])], dtype=torch.long
        )
        starts = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        labels[starts[:-1].long()] = IGNORE
        positions = torch.cat([torch.arange(length) for length in lengths])
        return {
            "rows": torch.tensor(lengths, dtype=torch.long),
            "input_ids": input_ids[None],
            "labels": labels[None],
            "position_ids": positions[None],
            # All ones: transformers then builds no dense mask, and counts every token as real.
            "attention_mask": torch.ones(1, len(input_ids), dtype=torch.long),
            "cu_seq_lens_q": starts,
            "cu_seq_lens_k": starts,
            "max_length_q": max(lengths),
            "max_length_k": max(lengths),
        }
