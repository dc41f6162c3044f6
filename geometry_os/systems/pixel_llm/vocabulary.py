"""Whether a tokenizer fits a model: the one check every loader, command and generator uses.

A model's ``vocab_size`` rows may exceed its tokenizer (a preset size, padding to a multiple): the ids
beyond the tokenizer cannot be decoded and are never generated. A tokenizer with more tokens than the
model has rows does not fit: its ids past ``vocab_size`` would index outside the embedding.
"""

from __future__ import annotations

from typing import Any

__all__ = ["tokenizer_misfit", "tokenizer_size", "undecodable_ids"]


def tokenizer_size(tokenizer: Any) -> int | None:
    """``len(tokenizer)``; None for no tokenizer or one without ``__len__`` (a decode()-only tokenizer)."""
    return len(tokenizer) if tokenizer is not None and hasattr(tokenizer, "__len__") else None


def tokenizer_misfit(tokenizer: Any, vocab_size: int) -> str | None:
    """Why ``tokenizer`` does not fit a model of ``vocab_size`` rows (one line, for the caller to prefix
    with the file or run at fault and raise as its own error type), or None when it fits or is unknown."""
    size = tokenizer_size(tokenizer)
    if size is not None and size > vocab_size:
        return f"tokenizer has {size} tokens but the model's vocab_size is {vocab_size}"
    return None


def undecodable_ids(tokenizer: Any, vocab_size: int) -> range:
    """The ids a model of ``vocab_size`` rows can emit that ``tokenizer`` cannot decode (empty when the
    tokenizer's size is unknown): generation suppresses them."""
    size = tokenizer_size(tokenizer)
    return range(size, vocab_size) if size is not None and size < vocab_size else range(0)
