"""Samples -> padded batches: ``CaptionCollator`` and ``create_dataloader``.

A batch is ``images`` (B, 3, H, W), ``input_ids`` / ``attention_mask`` / ``labels`` (B, T) padded to the
longest caption of the batch, and per sample its ``captions``, ``image_paths`` and dataset ``indices``.
Which positions are targets is ``targets.py``'s rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from geometry_os.systems.pixel_llm.protocols import PAD_ID
from geometry_os.systems.pixel_llm.targets import ignore_padding


class CaptionCollator:
    """Stack images and pad captions to the longest in the batch; a class so DataLoader workers can pickle it.

    ``labels`` are ``input_ids`` with padding set to ``IGNORE_INDEX`` (ignored by cross-entropy); shifting
    for next-token prediction is the model's business (``targets.next_token_targets``).
    """

    def __init__(self, pad_token_id: int = PAD_ID) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        length = max((len(item["input_ids"]) for item in items), default=0)
        input_ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = item["input_ids"]
            attention_mask[row, :n] = 1
        return {
            "images": torch.stack([item["image"] for item in items]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": ignore_padding(input_ids, attention_mask),
            "captions": [item["caption"] for item in items],
            "image_paths": [item["image_path"] for item in items],
            "indices": torch.tensor([item["index"] for item in items], dtype=torch.long),
        }


def create_dataloader(
    dataset: Dataset,
    batch_size: int = 32,
    shuffle: bool = True,
    num_workers: int = 0,
    pad_token_id: int = PAD_ID,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    sampler: Any = None,
    pin_memory: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader with ``CaptionCollator``; a ``sampler`` replaces ``shuffle``; extra kwargs go to DataLoader."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=CaptionCollator(pad_token_id),
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
        **kwargs,
    )
