"""Validation: the token-weighted loss over the whole validation loader, and greedy captions of a bounded
subset (``val_max_samples`` images) scored with the core caption metrics: exact match, BLEU-1..4,
ROUGE-L, CIDEr-D, distinct-1/2 and collapse statistics.

Loss alone hides the commonest failure of a small captioner: the same caption for every image. The
caption metrics show it, and a warning says so when most captions are identical.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager
from typing import Any, Callable

import torch

from .distributed import World

COLLAPSE_FRACTION = 0.5


class CaptionCollapseWarning(UserWarning):
    """Most validation images got the same caption."""


def count_targets(batch: dict[str, Any]) -> int:
    """Tokens the loss is averaged over: labels after the first position that are not ignored."""
    labels = batch["labels"]
    mask = batch.get("attention_mask")
    if mask is not None:
        labels = labels.masked_fill(mask == 0, -100)
    return int((labels[:, 1:] != -100).sum())


def generation_unavailable(tokenizer: Any) -> str | None:
    """Why captions cannot be generated (None when they can)."""
    if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
        return "no tokenizer to decode captions"
    try:
        from geometry_os.systems.pixel_llm.components import get_component
        from geometry_os.systems.pixel_llm.inference import generate_caption  # noqa: F401

        get_component("decoding_strategy", "greedy")
    except Exception as exc:  # inference or the greedy strategy not installed
        return f"generation unavailable: {type(exc).__name__}: {exc}"
    return None


def _generate(model: Any, images: torch.Tensor, tokenizer: Any) -> list[str]:
    from geometry_os.systems.pixel_llm.inference import GenerationConfig, generate_caption

    config = model.config
    generation = GenerationConfig(
        max_length=config.max_seq_len,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        strategy="greedy",
    )
    sequences = generate_caption(model, images, config=generation)
    # A model may have more rows than its tokenizer has tokens; such ids read as <unk>.
    sequences = sequences.masked_fill(sequences >= len(tokenizer), tokenizer.unk_token_id)
    return [tokenizer.decode(row.tolist()) for row in sequences]


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
    captions: dict[Any, tuple[str, list[str]]] = {}
    limit = -(-max_samples // world.world_size)
    try:
        for position, batch in enumerate(loader):
            batch = to_device(batch)
            with autocast():
                out = model(batch["images"], batch["input_ids"], batch.get("attention_mask"), batch["labels"])
            n = count_targets(batch)
            if n:
                totals += torch.stack([out.loss.double() * n, torch.tensor(float(n), dtype=torch.float64, device=device)])
            if unavailable is None and "captions" in batch and len(captions) < limit:
                keys = _keys(batch, position, world)
                wanted = [i for i, key in enumerate(keys) if key not in captions][: limit - len(captions)]
                if wanted:
                    with autocast():
                        texts = _generate(model, batch["images"][wanted], tokenizer)
                    for i, text in zip(wanted, texts):
                        captions[keys[i]] = (text, [batch["captions"][i]])
                for i, key in enumerate(keys):  # more references of images already captioned
                    if key in captions and i not in wanted and batch["captions"][i] not in captions[key][1]:
                        captions[key][1].append(batch["captions"][i])
    finally:
        model.train(was_training)
    world.all_reduce_sum(totals)
    loss_sum, tokens = totals.tolist()
    metrics = {"val_loss": loss_sum / tokens if tokens else float("nan"), "val_tokens": tokens}
    if unavailable is None:
        metrics.update(_caption_metrics(captions, world, max_samples))
    return metrics


def _keys(batch: dict[str, Any], position: int, world: World) -> list[Any]:
    """One key per image, so that images with several captions are captioned once."""
    if "image_paths" in batch:
        return list(batch["image_paths"])
    if "indices" in batch:
        return [int(i) for i in batch["indices"]]
    size = len(batch["captions"])
    return [(world.rank, position, i) for i in range(size)]


def _caption_metrics(captions: dict[Any, tuple[str, list[str]]], world: World, max_samples: int) -> dict[str, float]:
    """Merge every process's captions, score them once on the main process, share the result."""
    gathered = world.gather_objects(list(captions.items()))
    metrics: dict[str, float] = {}
    if world.is_main:
        merged: dict[Any, tuple[str, list[str]]] = {}
        for items in gathered:
            for key, (text, refs) in items:
                if key in merged:
                    merged[key][1].extend(r for r in refs if r not in merged[key][1])
                else:
                    merged[key] = (text, list(refs))
        chosen = list(merged.values())[:max_samples]
        if chosen:
            metrics = score([text for text, _ in chosen], [refs for _, refs in chosen])
            metrics["example_caption"] = chosen[0][0]
    return world.broadcast_object(metrics)


def score(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """The core caption metrics; without the optional pycocoevalcap (``.[metrics]``) only exact match and
    the diversity statistics, which need nothing beyond the standard library."""
    from geometry_os.systems.pixel_llm import metrics as core

    try:
        return core.caption_metrics(predictions, references)
    except ImportError:
        exact = sum(core.normalize(p) in {core.normalize(r) for r in refs} for p, refs in zip(predictions, references))
        return {"exact_match": exact / len(predictions), **core.diversity(predictions), "num_images": float(len(predictions))}


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
    message = collapse_message(metrics)
    if message:
        warnings.warn(message, CaptionCollapseWarning, stacklevel=3)
