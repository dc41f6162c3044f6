"""The token loop of greedy decoding and sampling over a static KV cache
(``GenerationConfig(cache_implementation="static")``, HF's name).

Every step has the same shapes and tensor addresses (``decoder.init_static_cache`` /
``decoder.static_step``, see the ``xattn`` decoder), so on CUDA the step is captured once in a CUDA
graph (``torch.cuda.CUDAGraph``) and replayed per token: one launch instead of one per op, which is
what batch-1 latency on a GPU is made of. Captured graphs are kept per decoder and shape and reused by
later calls (the cache is refilled with the new images' K/V). Finished rows stay in the batch (their
tokens are replaced by ``<pad>``); the loop ends when every row has finished. On a CPU the same loop
runs eagerly. Captions equal those of the dynamic cache up to floating-point summation order
(attention runs over the whole buffer with a mask).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from geometry_os.errors import ComponentError

# decoder -> {(rows, max_length, images, N, dtype, device, parameter addresses): captured step}
_CAPTURED: weakref.WeakKeyDictionary[Any, dict[tuple, _CapturedStep]] = weakref.WeakKeyDictionary()


class _CapturedStep:
    """``decoder.static_step(tokens, cache)`` recorded in a CUDA graph over fixed buffers."""

    def __init__(self, decoder: Any, cache: Any, rows: int):
        self.cache = cache
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=cache.self_kv.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the graph (lazy kernel set-up, cuBLAS handles)
            for _ in range(2):
                decoder.static_step(self.tokens, cache)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decoder.static_step(self.tokens, cache)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits


def _step_function(
    decoder: Any, features: torch.Tensor, rows: int, max_len: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``tokens (rows, 1) -> logits (rows, vocab)`` for positions 0, 1, ... of these images."""
    if not supports_static_cache(decoder):
        raise ComponentError(
            f"decoder {type(decoder).__name__} has no static cache (cross_kv/init_static_cache/static_step): "
            "use cache_implementation='dynamic'"
        )
    if features.device.type != "cuda":
        cache = decoder.init_static_cache(features, max_len, rows)
        return lambda tokens: decoder.static_step(tokens, cache)
    key = (
        rows,
        max_len,
        *features.shape[:2],
        features.dtype,
        features.device,
        tuple(p.data_ptr() for p in decoder.parameters()),
    )  # new weights: a new graph
    graphs = _CAPTURED.setdefault(decoder, {})
    step = graphs.get(key)
    if step is None:
        graphs.clear()  # one graph per decoder: replaced weights or shapes free the old buffers
        step = graphs[key] = _CapturedStep(decoder, decoder.init_static_cache(features, max_len, rows), rows)
    step.cache.refill(decoder.cross_kv(features))
    return step


def supports_static_cache(decoder: Any) -> bool:
    return all(callable(getattr(decoder, name, None)) for name in ("cross_kv", "init_static_cache", "static_step"))


def use_static_cache(decoder: Any, features: torch.Tensor, config: Any) -> bool:
    """``"static"`` asked for, or left unset (None) on CUDA with a decoder that supports it and no
    attentions asked for: there the captured step is several times faster with the same token ids."""
    if config.cache_implementation is not None:
        return config.cache_implementation == "static"
    return features.device.type == "cuda" and not config.output_attentions and supports_static_cache(decoder)


class StaticSteps:
    """Decoder steps over a static cache for the greedy/sampling loop: ``(tokens, active) -> logits``
    of the ``active`` rows (the loop's surviving rows; finished rows stay in the cache, unread)."""

    def __init__(self, decoder: Any, features: torch.Tensor, rows: int, max_len: int):
        self.step = _step_function(decoder, features, rows, max_len)
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=features.device)

    def __call__(self, tokens: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, None]:
        if active.numel() == self.tokens.shape[0]:
            return self.step(tokens), None
        self.tokens[active] = tokens
        return self.step(self.tokens)[active], None

    def drop(self, keep: torch.Tensor) -> None:
        """Rows leave the loop, not the cache: its shapes never change."""
