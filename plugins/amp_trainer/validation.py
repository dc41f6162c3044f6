"""Validation: the token-weighted loss over the whole validation loader, and greedy captions of a bounded
subset (the first ``val_max_samples`` images) scored with the core caption metrics: exact match,
BLEU-1..4, ROUGE-L, CIDEr-D, distinct-1/2 and collapse statistics.

Each image is captioned once and scored against all of its references: every caption the loader yields
for it over the whole pass (every process's share under DDP), grouped by ``dataset.group_references`` as
``dataset.references`` groups them, whatever the file order (grouped or COCO-interleaved) or batch size.

Loss alone hides the commonest failure of a small captioner: the same caption for every image. The
caption metrics show it, and a warning says so when most captions are identical.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from .distributed import World

COLLAPSE_FRACTION = 0.5


class CaptionCollapseWarning(UserWarning):
    """Most validation images got the same caption."""


def generation_unavailable(tokenizer: Any) -> str | None:
    """Why captions cannot be generated (None when they can)."""
    if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
        return "no tokenizer to decode captions"
    try:
        from geometry_os.systems.pixel_llm.plugin_api import (
            generate_caption,  # noqa: F401
            get_component,
        )

        get_component("decoding_strategy", "greedy")
    except Exception as exc:  # inference or the greedy strategy not installed
        return f"generation unavailable: {type(exc).__name__}: {exc}"
    return None


def _generate(model: Any, images: torch.Tensor, tokenizer: Any) -> list[str]:
    from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig, generate_caption

    config = model.config
    generation = GenerationConfig(
        max_length=config.max_seq_len,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        strategy="greedy",
    )
    sequences = generate_caption(model, images, config=generation)
    assert isinstance(sequences, torch.Tensor)  # ids only: return_dict_in_generate is off
    # A model may have more rows than its tokenizer has tokens; such ids read as <unk>.
    sequences = sequences.masked_fill(sequences >= len(tokenizer), tokenizer.unk_token_id)
    return [tokenizer.decode(row.tolist()).strip() for row in sequences]  # as generate_output's texts


@torch.no_grad()
def evaluate(
    model: Any,
    loader: Any,
    *,
    to_device: Callable[[dict[str, Any]], dict[str, Any]],
    autocast: Callable[[], AbstractContextManager],
    world: World,
    tokenizer: Any,
    max_samples: int,
) -> dict[str, float]:
    """``val_loss`` (and ``val_tokens``) plus, when captions can be generated, the caption metrics."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, tokens
    unavailable = generation_unavailable(tokenizer)
    captions: dict[Any, str] = {}  # image key -> its generated caption
    samples: list[tuple[Any, Any, str]] = []  # (sample id, image key, reference caption) of every sample
    limit = -(-max_samples // world.world_size)
    try:
        for position, batch in enumerate(loader):
            batch = to_device(batch)
            with autocast():
                out = model(
                    batch["images"], batch["input_ids"], batch.get("attention_mask"), batch["labels"], reduction="sum"
                )
            totals += torch.stack([out.loss.double(), out.n_tokens.double()])
            if unavailable is None and "captions" in batch:
                keys, ids = _keys(batch, position, world)
                samples.extend(zip(ids, keys, batch["captions"]))
                wanted: dict[Any, int] = {}  # new image key -> its first row in this batch
                for i, key in enumerate(keys):
                    if key not in captions and key not in wanted and len(captions) + len(wanted) < limit:
                        wanted[key] = i
                if wanted:
                    with autocast():
                        texts = _generate(model, batch["images"][list(wanted.values())], tokenizer)
                    captions.update(zip(wanted, texts))
    finally:
        model.train(was_training)
    world.all_reduce_sum(totals)
    loss_sum, tokens = totals.tolist()
    metrics = {"val_loss": loss_sum / tokens if tokens else float("nan"), "val_tokens": tokens}
    if unavailable is None:
        metrics.update(_caption_metrics(captions, samples, world, max_samples))
    return metrics


def _keys(batch: dict[str, Any], position: int, world: World) -> tuple[list[Any], list[Any]]:
    """One key per image (images with several captions are captioned once) and one id per sample: its
    dataset index, which orders the references as the file does and counts each sample once, or where
    there is none (no ``indices``, or -1 from a streamed WebDataset) its (rank, batch, row)."""
    size = len(batch["captions"])
    indices = [int(i) for i in batch["indices"]] if "indices" in batch else [-1] * size
    ids = [i if i >= 0 else (world.rank, position, row) for row, i in enumerate(indices)]
    keys = list(batch["image_paths"]) if "image_paths" in batch else list(ids)
    return keys, ids


def _caption_metrics(
    captions: dict[Any, str], samples: list[tuple[Any, Any, str]], world: World, max_samples: int
) -> dict[str, Any]:
    """Merge every process's captions and samples, score them once on the main process, share the result."""
    from geometry_os.systems.pixel_llm.plugin_api import group_references

    gathered = world.gather_objects((list(captions.items()), samples))
    metrics: dict[str, Any] = {}  # the scores, and one example caption (a string)
    if world.is_main:
        merged: dict[Any, str] = {}
        unique: dict[Any, tuple[Any, str]] = {}  # sample id -> (image key, caption)
        for items, rows in gathered:
            for key, text in items:
                merged.setdefault(key, text)
            for sample_id, key, caption in rows:
                unique.setdefault(sample_id, (key, caption))
        references = dict(group_references(unique[i] for i in sorted(unique, key=_order)))
        chosen = list(merged.items())[:max_samples]
        if chosen:
            scores = score([text for _, text in chosen], [references[key] for key, _ in chosen])
            metrics = {**scores, "example_caption": chosen[0][1]}
    return world.broadcast_object(metrics)


def _order(sample_id: Any) -> tuple:
    """Sort key of sample ids: dataset indices, or (rank, batch, row) where a loader gives none."""
    return sample_id if isinstance(sample_id, tuple) else (sample_id,)


def score(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """The core caption metrics; without the optional pycocoevalcap (``.[metrics]``) only exact match and
    the diversity statistics, which need nothing beyond the standard library."""
    from geometry_os.systems.pixel_llm.plugin_api import metrics as core

    try:
        return core.caption_metrics(predictions, references)
    except ImportError:
        return {
            "exact_match": core.exact_match(predictions, references),
            **core.diversity(predictions),
            "num_images": float(len(predictions)),
        }


def collapse_message(metrics: dict[str, Any]) -> str | None:
    """A warning text when more than half of the generated captions are one and the same."""
    fraction = metrics.get("most_common_fraction")
    if fraction is None or metrics.get("num_images", 0) < 2 or fraction <= COLLAPSE_FRACTION:
        return None
    return (
        f"captions collapsed: {fraction:.0%} of {int(metrics['num_images'])} validation images got the same "
        f"caption (distinct-1 {metrics.get('distinct_1', 0):.2f}); train longer, lower the learning rate or "
        "check the data"
    )


def warn_if_collapsed(metrics: dict[str, Any]) -> None:
    """Issue a ``CaptionCollapseWarning`` with ``collapse_message`` when the captions collapsed."""
    message = collapse_message(metrics)
    if message:
        warnings.warn(message, CaptionCollapseWarning, stacklevel=3)
