"""The one rule of which token positions are predicted and count as targets of the loss.

A caption batch holds ``input_ids`` (B, T) padded on the right and ``attention_mask`` (B, T), 1 for real
tokens. Logits at position t predict the token at t+1, so the targets are ``labels[:, 1:]``; a target is
ignored (``IGNORE_INDEX``, skipped by cross-entropy) where it is padding or where the labels already say
``IGNORE_INDEX``. The collator, the model's loss and the trainer's token counts all apply this rule
through ``ignore_padding`` and ``next_token_targets``.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # the label of positions that are not targets (cross-entropy's ignore_index)


def ignore_padding(labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``labels`` (B, T) with every padding position (``attention_mask == 0``) set to ``IGNORE_INDEX``;
    unchanged (the same tensor) without a mask."""
    if attention_mask is None:
        return labels
    return labels.masked_fill(attention_mask == 0, IGNORE_INDEX)


def next_token_targets(labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The targets of next-token prediction, (B, T-1): position t of the logits predicts ``labels[:, t+1]``;
    padding and ``IGNORE_INDEX`` labels are ``IGNORE_INDEX``."""
    return ignore_padding(labels, attention_mask)[:, 1:]


def count_targets(labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> int:
    """How many tokens the loss of this batch sums over: the targets of ``next_token_targets`` that are
    not ignored. Counted where the tensors are (on CPU batches: no device sync)."""
    return int((next_token_targets(labels, attention_mask) != IGNORE_INDEX).sum())
