"""Helpers shared by the decoding strategies: logits processors (HF semantics) and output assembly.

Order, as in HF ``generate``: penalties and bans on the raw logits (every strategy), then, for
sampling only, temperature -> top-k -> top-p. Scores are log-softmax of the processed logits, so a
caption's score is its log-probability under the distribution it was decoded from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig, GenerationOutput, caption_lengths

NEG_INF = float("-inf")


def generation_length(model, config: GenerationConfig) -> int:
    """Caption length cap in tokens (``<bos>`` included): the config's, within the decoder's reach."""
    return max(1, min(config.total_length, model.decoder.max_seq_len))


def needs_prefix(config: GenerationConfig) -> bool:
    """Whether ``process_logits`` reads the tokens so far (skip gathering them otherwise)."""
    return config.repetition_penalty != 1.0 or config.no_repeat_ngram_size > 0


def process_logits(
    logits: torch.Tensor, prefix: torch.Tensor | None, length: int, config: GenerationConfig
) -> torch.Tensor:
    """Penalties and bans for the token after ``prefix`` (rows, ``length`` tokens); in place, float32."""
    logits = logits.float()
    if config.suppress_tokens:
        logits.masked_fill_(_suppressed(config.suppress_tokens, logits.shape[-1], logits.device), NEG_INF)
    if config.repetition_penalty != 1.0:
        assert prefix is not None  # needs_prefix(config): the caller gathered it
        logits = repetition_penalty(logits, prefix, config.repetition_penalty)
    if length < config.min_length:
        logits[:, config.eos_token_id] = NEG_INF
    if config.no_repeat_ngram_size > 0:
        assert prefix is not None  # needs_prefix(config): the caller gathered it
        banned = repeated_ngram_mask(logits, prefix, config.no_repeat_ngram_size)
        # <eos> never completes a repeat, so a row can only run out of tokens while min_length bans
        # <eos> (tiny vocabularies): it then repeats rather than produce NaN
        banned &= ~(banned | torch.isneginf(logits)).all(dim=-1, keepdim=True)
        logits = logits.masked_fill_(banned, NEG_INF)
    return logits


_SUPPRESSED: tuple[list[int], tuple[int, torch.device], torch.Tensor] | None = None


def _suppressed(ids: list[int], vocab: int, device: torch.device) -> torch.Tensor:
    """(vocab,) bool mask of ``ids``, built once per list (a decode calls this every step with the same
    list; holding it keeps the identity check sound)."""
    global _SUPPRESSED
    if _SUPPRESSED is None or _SUPPRESSED[0] is not ids or _SUPPRESSED[1] != (vocab, device):
        mask = torch.zeros(vocab, dtype=torch.bool)
        mask[[t for t in ids if 0 <= t < vocab]] = True
        _SUPPRESSED = (ids, (vocab, device), mask.to(device))
    return _SUPPRESSED[2]


def repetition_penalty(logits: torch.Tensor, prefix: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF (CTRL) penalty on every token already present: positive logits / penalty, negative * penalty."""
    seen = logits.gather(1, prefix)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter_(1, prefix, seen)


def repeated_ngram_mask(logits: torch.Tensor, prefix: torch.Tensor, n: int) -> torch.Tensor:
    """Tokens that would complete an n-gram already in ``prefix`` (HF ``no_repeat_ngram_size``)."""
    length = prefix.shape[1]
    banned = torch.zeros_like(logits, dtype=torch.bool)
    if length < n:  # no complete n-gram yet
        return banned
    grams = prefix.unfold(1, n, 1)  # (rows, length - n + 1, n)
    tail = prefix[:, length - n + 1 :]  # the last n - 1 tokens
    hits = (grams[:, :, : n - 1] == tail[:, None, :]).all(dim=-1)  # n-grams that start like the tail
    counts = torch.zeros_like(logits).scatter_add_(1, grams[:, :, -1], hits.to(logits.dtype))
    return counts > 0


def warp_logits(logits: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """Sampling warpers, HF order: temperature, then top-k, then top-p (ties at the cut are kept)."""
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - config.top_p
        drop[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(1, order, drop), NEG_INF)
    return logits


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-probs of processed logits. Every row keeps a finite logit (top-k / top-p keep the best
    token, the n-gram ban never empties a row), so no NaN can appear."""
    return F.log_softmax(logits, dim=-1)


def length_penalised(sum_logprobs: torch.Tensor, generated: torch.Tensor | int, penalty: float) -> torch.Tensor:
    """HF beam score: ``sum_logprobs / generated ** penalty``; ``generated`` counts the tokens after
    ``<bos>`` (``<eos>`` included), HF's ``generated_len`` for a decoder prompted with ``<bos>`` only."""
    if isinstance(generated, int):
        return sum_logprobs / float(max(generated, 1)) ** penalty
    return sum_logprobs / generated.clamp(min=1).to(sum_logprobs.dtype) ** penalty


def survivors(done: torch.Tensor) -> torch.Tensor | None:
    """Positions of the rows that are not ``done``, or None when no row is done (nothing to drop).
    Empty means every row is done. Costs a host sync (two when some row is done)."""
    if not bool(done.any()):
        return None
    return (~done).nonzero().squeeze(1)


def assemble_output(
    sequences: torch.Tensor,
    config: GenerationConfig,
    sum_logprobs: torch.Tensor | None = None,
    token_scores: torch.Tensor | None = None,
    cross_attentions: list[torch.Tensor] | None = None,
    lengths: torch.Tensor | None = None,
    scores_penalised: torch.Tensor | None = None,
) -> GenerationOutput:
    """Trim to the longest caption, pad after ``<eos>``, attach the scores the config asked for."""
    if lengths is None:
        lengths = caption_lengths(sequences, config.eos_token_id)
    longest = int(lengths.max()) if lengths.numel() else 1
    positions = torch.arange(sequences.shape[1], device=sequences.device)
    sequences = sequences.masked_fill(positions >= lengths[:, None], config.pad_token_id)[:, :longest]
    out = GenerationOutput(sequences=sequences)
    if token_scores is not None:
        token_scores = token_scores[:, : longest - 1]
        if sum_logprobs is None:
            sum_logprobs = token_scores.sum(dim=1)
    if sum_logprobs is not None:
        out.sequence_scores = sum_logprobs
        if scores_penalised is None:
            scores_penalised = length_penalised(sum_logprobs, lengths - 1, config.length_penalty)
        out.scores_penalised = scores_penalised
    if config.output_scores:
        out.token_scores = token_scores
    if cross_attentions is not None:
        out.cross_attentions = cross_attentions[: longest - 1]
    return out
