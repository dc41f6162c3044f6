"""Captions -> token ids: the tokenizer a dataset uses, its special ids, truncation, and ``CaptionTokens``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from geometry_os.systems.pixel_llm.protocols import EOS_ID


def truncate(ids: list[int], max_length: int, eos_token_id: int = EOS_ID) -> list[int]:
    """Cut to ``max_length`` tokens; a final ``<eos>`` (the tokenizer's ``eos_token_id``) is kept so the
    model still learns to stop."""
    if len(ids) <= max_length:
        return ids
    return ids[: max_length - 1] + [eos_token_id] if ids[-1] == eos_token_id else ids[:max_length]


def special_id(tokenizer: Any, name: str, default: int) -> int:
    """``tokenizer.<name>`` (e.g. ``eos_token_id``) when it declares one, else ``default``."""
    value = getattr(tokenizer, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def resolve_tokenizer(tokenizer: Any, captions: Sequence[str]) -> tuple[Any, Callable[[str], Sequence[int]]]:
    """(tokenizer object or None, encode function).

    None trains the registry's default tokenizer component on ``captions``; a tokenizer component's name
    (``"bpe"``) trains that one (``ComponentError`` if unknown). A tokenizer object gives its ``encode``;
    any other callable text -> ids is used as it is (``vocab.encode`` keeps ``vocab`` for decoding).
    Raises ``TypeError`` for anything else.
    """
    if tokenizer is None or isinstance(tokenizer, str):
        from geometry_os.systems.pixel_llm.resolution import get_component

        tokenizer_class: Any = get_component("tokenizer", tokenizer or None).load()
        tokenizer = tokenizer_class.train(list(captions), None)
    if callable(getattr(tokenizer, "encode", None)):
        return tokenizer, tokenizer.encode
    if callable(tokenizer):
        owner = getattr(tokenizer, "__self__", None)  # ``vocab.encode`` -> keep ``vocab`` for decoding
        return (owner if callable(getattr(owner, "decode", None)) else None), tokenizer
    raise TypeError(f"tokenizer must be a callable text -> ids or have .encode, got {type(tokenizer).__name__}")


class CaptionTokens:
    """Token ids of all captions in one flat tensor (no per-caption Python objects for workers to copy).

    ``tokens[i]`` is caption i's ids (a LongTensor of at most ``max_length``, see ``truncate``);
    ``lengths`` their counts.
    """

    def __init__(
        self,
        encode: Callable[[str], Sequence[int]],
        captions: Sequence[str],
        max_length: int,
        eos_token_id: int = EOS_ID,
    ) -> None:
        rows = [truncate([int(i) for i in encode(c)], max_length, eos_token_id) for c in captions]
        self.lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        self.flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.flat[self.offsets[index] : self.offsets[index + 1]].clone()
