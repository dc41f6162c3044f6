"""Sampling (temperature, top-k, top-p): the greedy loop with a random draw instead of argmax."""

from __future__ import annotations

import torch

from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig

from .common import warp_logits
from .greedy import GreedyDecoding


class SampleDecoding(GreedyDecoding):
    """Draws each token from the warped distribution; ``generator`` makes the draws reproducible.
    ``num_return_sequences`` draws per image share that image's encoding (``cache.expand``)."""

    def next_tokens(
        self, logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = warp_logits(logits, config)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1), logits
