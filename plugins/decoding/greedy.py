"""Greedy decoding, and the token-by-token loop that sampling shares (greedy = argmax).

Each row stops at its own ``<eos>``; finished rows leave the batch (``cache.reorder``) so no compute
is spent on them, and the loop ends when every row has finished or the length cap is reached.
"""

from __future__ import annotations

from typing import Any

import torch

from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig, GenerationOutput

from .common import assemble_output, generation_length, log_softmax, needs_prefix, process_logits, survivors
from .guidance import guided
from .static import StaticSteps, use_static_cache


class DynamicSteps:
    """Decoder steps over a ``KVCache`` whose rows leave as they finish: ``(tokens, active) ->
    (logits, cross-attention or None)`` of the active rows, which are exactly the cache's rows."""

    def __init__(self, decoder: Any, features: torch.Tensor, max_len: int, config: GenerationConfig):
        self.decoder = decoder
        self.output_attentions = config.output_attentions
        self.cache = decoder.init_cache(features, max_len)
        self.cache.expand(config.num_return_sequences)

    def __call__(self, tokens: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.decoder.step(tokens, self.cache, output_attentions=self.output_attentions)
        return out if self.output_attentions else (out, None)

    def drop(self, keep: torch.Tensor) -> None:
        """Keep only rows ``keep`` (finished rows leave the batch: no compute is spent on them)."""
        self.cache.reorder(keep)


class GreedyDecoding:
    """The most likely token at every step (after repetition penalty / n-gram and min-length bans)."""

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def next_tokens(
        self, logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (rows,), logits they were chosen from)``; sampling overrides this one method."""
        return logits.argmax(dim=-1), logits

    def decode(
        self,
        model: Any,
        features: torch.Tensor,
        config: GenerationConfig,
        generator: torch.Generator | None = None,
    ) -> GenerationOutput:
        decoder = guided(model.decoder, config)
        max_len = generation_length(model, config)
        rows = features.shape[0] * config.num_return_sequences
        device = features.device
        sequences = torch.full((rows, max_len), config.pad_token_id, dtype=torch.long, device=device)
        sequences[:, 0] = config.bos_token_id
        want_scores = config.output_scores or config.return_dict_in_generate
        token_scores = torch.zeros(rows, max_len - 1, device=device) if want_scores else None
        attentions: list[torch.Tensor] | None = [] if config.output_attentions else None

        if max_len > 1:
            if use_static_cache(decoder, features, config):
                steps: DynamicSteps | StaticSteps = StaticSteps(decoder, features, rows, max_len)
            else:
                steps = DynamicSteps(decoder, features, max_len, config)
            active = torch.arange(rows, device=device)  # sequence row of each cache row
            tokens = sequences[:, :1]
            for t in range(1, max_len):
                logits, attn = steps(tokens, active)
                prefix = sequences[active, :t] if needs_prefix(config) else None
                logits = process_logits(logits, prefix, t, config)
                chosen, dist = self.next_tokens(logits, config, generator)
                sequences[active, t] = chosen
                if token_scores is not None:
                    token_scores[active, t - 1] = log_softmax(dist).gather(1, chosen[:, None]).squeeze(1)
                if attentions is not None:
                    assert attn is not None  # output_attentions: every step returns them
                    full = attn.new_zeros(rows, *attn.shape[1:])
                    full[active] = attn
                    attentions.append(full.float())
                if t >= config.min_length:  # <eos> is banned before: nothing can finish (no host sync)
                    keep = survivors(chosen == config.eos_token_id)
                    if keep is not None:  # drop finished rows from the batch
                        if keep.numel() == 0:
                            break
                        steps.drop(keep)
                        active, chosen = active[keep], chosen[keep]
                tokens = chosen[:, None]
        return assemble_output(sequences, config, token_scores=token_scores, cross_attentions=attentions)
