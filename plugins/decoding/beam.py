"""Beam search, vectorised over images and beams, with HF's finished-hypotheses semantics.

Per image: ``num_beams`` running beams and a pool of the ``num_beams`` best finished captions.
Every step takes the top ``2 * num_beams`` continuations of all running beams; those ending in
``<eos>`` within the top ``num_beams`` ranks join the pool (score ``sum_logprobs / length **
length_penalty``, length = tokens after ``<bos>`` with the ``<eos>``, HF's ``generated_len`` for a
decoder prompted with ``<bos>`` only), and the best ``num_beams`` others run on. An image stops as
HF decides (``early_stopping``: True, False's heuristic, or "never"'s exact bound) and leaves the
batch; at the length cap its running beams join the pool as unfinished captions, so there is
always an answer. The image is encoded once: its decoder cache is expanded, then reordered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig, GenerationOutput, reorder_cache

from .common import NEG_INF, assemble_output, generation_length, log_softmax, needs_prefix, process_logits, survivors
from .guidance import guided


class _History:
    """Per-row state that follows the beams: tokens, and (when asked for) token log-probs and
    cross-attention weights. ``take(index)`` reorders / selects rows, ``index`` of any shape."""

    def __init__(self, seq: torch.Tensor, tok: torch.Tensor | None, att: torch.Tensor | None = None):
        self.seq, self.tok, self.att = seq, tok, att

    def take(self, index: Any) -> _History:
        """The rows ``index`` selects (a tensor of row numbers, or a tuple of slices)."""
        return self._map(lambda x: x[index])

    def grouped(self, n: int) -> _History:
        """(n * K, ...) rows as (n, K, ...)."""
        return self._map(lambda x: x.view(n, -1, *x.shape[1:]))

    def _map(self, f: Callable[[torch.Tensor], torch.Tensor]) -> _History:
        return _History(
            f(self.seq), None if self.tok is None else f(self.tok), None if self.att is None else f(self.att)
        )

    def write(self, t: int, tokens: torch.Tensor, logps: torch.Tensor | None) -> None:
        """Token ``t`` (position t in ``seq``, t - 1 in the per-generated-token tensors)."""
        self.seq[..., t] = tokens
        if self.tok is not None:
            assert logps is not None  # output_scores: the caller passes them
            self.tok[..., t - 1] = logps


class _Pool:
    """The best ``k`` finished captions of each of ``images`` images, sorted by penalised score."""

    def __init__(self, images: int, k: int, max_len: int, config: GenerationConfig, device: torch.device):
        self.score = torch.full((images, k), NEG_INF, device=device)  # length-penalised
        self.sum = torch.full((images, k), NEG_INF, device=device)  # sum of log-probs
        self.length = torch.ones(images, k, dtype=torch.long, device=device)  # tokens incl. <bos>
        seq = torch.full((images, k, max_len), config.pad_token_id, dtype=torch.long, device=device)
        seq[:, :, 0] = config.bos_token_id
        tok = torch.zeros(images, k, max_len - 1, device=device) if config.output_scores else None
        self.hist = _History(seq, tok)  # att: created with the first candidates that carry it
        self.filled = False  # host-side: has anything joined yet (the pool cannot be full before)

    def add(self, images: torch.Tensor, score: torch.Tensor, sums: torch.Tensor, length: int, cand: _History) -> None:
        """Merge candidates (n, c, ...) of ``images`` (n,); existing entries win ties, as in HF."""
        k = self.score.shape[1]
        merged = torch.cat([self.score[images], score], dim=1)
        order = torch.sort(merged, dim=1, descending=True, stable=True).indices[:, :k]

        def pick(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            both = torch.cat([old, new], dim=1)
            index = order.view(*order.shape, *([1] * (both.dim() - 2))).expand(-1, -1, *both.shape[2:])
            return both.gather(1, index)

        self.score[images] = merged.gather(1, order)
        self.sum[images] = pick(self.sum[images], sums)
        self.length[images] = pick(self.length[images], torch.full_like(score, length, dtype=torch.long))
        if cand.att is not None and self.hist.att is None:
            self.hist.att = cand.att.new_zeros(self.score.shape[0], k, *cand.att.shape[2:])
        for name in ("seq", "tok", "att"):
            old = getattr(self.hist, name)
            if old is not None:
                old[images] = pick(old[images], getattr(cand, name))
        self.filled = True

    def worst(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(is the pool full, its worst score) for each of ``images``."""
        scores = self.score[images]
        return torch.isfinite(scores).all(dim=1), scores[:, -1]


class BeamSearchDecoding:
    """Beam search (see the module docstring); ``num_return_sequences`` best distinct captions each."""

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def decode(
        self,
        model: Any,
        features: torch.Tensor,
        config: GenerationConfig,
        generator: torch.Generator | None = None,
    ) -> GenerationOutput:
        decoder = guided(model.decoder, config)
        device = features.device
        B, K = features.shape[0], config.num_beams
        max_len = generation_length(model, config)
        pool = _Pool(B, K, max_len, config, device)
        if max_len > 1:
            self._search(decoder, features, config, max_len, pool)
        else:  # no new tokens (max_new_tokens=0): the <bos> alone, an empty sum of log-probs, as greedy
            pool.score.zero_()
            pool.sum.zero_()
        return self._output(pool, config)

    def _search(
        self, decoder: Any, features: torch.Tensor, config: GenerationConfig, max_len: int, pool: _Pool
    ) -> None:
        device = features.device
        B, K = features.shape[0], config.num_beams
        eos, lp = config.eos_token_id, config.length_penalty
        with_att = config.output_attentions
        cache = decoder.init_cache(features, max_len)
        cache.expand(K)

        images = torch.arange(B, device=device)  # image of each running group of K beams
        seq = torch.full((B * K, max_len), config.pad_token_id, dtype=torch.long, device=device)
        seq[:, 0] = config.bos_token_id
        running = _History(seq, torch.zeros(B * K, max_len - 1, device=device) if config.output_scores else None)
        beam_scores = torch.zeros(B, K, device=device)
        beam_scores[:, 1:] = NEG_INF  # all beams start equal: expand only the first one
        top_ranks = torch.arange(2 * K, device=device) < K
        offsets = K * torch.arange(B, device=device)[:, None]  # first row of each image's beams

        for t in range(1, max_len):
            n = images.numel()
            out = decoder.step(running.seq[:, t - 1 : t], cache, output_attentions=with_att)
            logits, att = out if with_att else (out, None)
            logits = process_logits(logits, running.seq[:, :t] if needs_prefix(config) else None, t, config)
            logp = log_softmax(logits)  # (n*K, V)
            V = logp.shape[-1]
            if att is not None:
                if running.att is None:
                    running.att = att.new_zeros(n * K, max_len - 1, *att.shape[1:], dtype=torch.float32)
                running.att[:, t - 1] = att.float()

            cand = (beam_scores.view(-1, 1) + logp).view(n, K * V)
            top, idx = cand.topk(2 * K, dim=1)  # sorted, best first
            src = idx.div(V, rounding_mode="floor") + offsets[:n]  # (n, 2K) rows the candidates extend
            tok = idx % V
            tok_logp = logp[src, tok] if running.tok is not None else None  # only for output_scores
            is_eos = tok == eos

            # candidates ending in <eos> within the top K ranks join the pool (none while it is banned)
            if t >= config.min_length:
                joins = is_eos & top_ranks & torch.isfinite(top)
                if bool(joins.any()):
                    finished = running.take(src)
                    finished.write(t, tok, tok_logp)
                    score = torch.where(joins, top / float(t) ** lp, NEG_INF)
                    pool.add(images, score, torch.where(joins, top, NEG_INF), t + 1, finished)

            # the best K other candidates run on
            beam_scores, keep = torch.where(is_eos, NEG_INF, top).topk(K, dim=1)
            rows = src.gather(1, keep).view(-1)
            running = running.take(rows)
            running.write(
                t, tok.gather(1, keep).view(-1), None if tok_logp is None else tok_logp.gather(1, keep).view(-1)
            )

            if t == max_len - 1:  # length cap: unfinished beams of running images join the pool
                pool.add(images, beam_scores / float(t) ** lp, beam_scores, t + 1, running.grouped(n))
                break

            kept = None  # positions of the images still running (None: all)
            if pool.filled:  # an image may be done only once it has finished captions
                kept = survivors(self._is_done(pool, images, beam_scores[:, 0], t, max_len, config))
                if kept is not None:  # finished images leave the batch
                    if kept.numel() == 0:
                        break
                    images, beam_scores = images[kept], beam_scores[kept]
                    kept_rows = (kept[:, None] * K + torch.arange(K, device=device)).view(-1)  # K beams each
                    rows, running = rows[kept_rows], running.take(kept_rows)
            reorder_cache(cache, rows, kept)  # K rows per image, each from its own image's rows

    @staticmethod
    def _is_done(
        pool: _Pool, images: torch.Tensor, best_running: torch.Tensor, t: int, max_len: int, config: GenerationConfig
    ) -> torch.Tensor:
        """HF's stopping rule per image: the pool holds num_beams captions and (early_stopping=True)
        that is enough, or (False) the best running beam scored at today's length cannot beat the
        worst, or ("never") cannot beat it at any reachable length. No running beam left: done."""
        full, worst = pool.worst(images)
        lp = config.length_penalty
        if config.early_stopping is True:
            done = full
        else:
            length = max_len - 1 if config.early_stopping == "never" and lp > 0 else t
            done = full & (worst >= best_running / float(length) ** lp)
        return done | torch.isneginf(best_running)

    @staticmethod
    def _output(pool: _Pool, config: GenerationConfig) -> GenerationOutput:
        R = config.num_return_sequences
        B, K, max_len = pool.hist.seq.shape
        best = pool.hist.take((slice(None), slice(0, R)))  # the R best of each image, rows by image
        attentions = None
        if config.output_attentions:
            attentions = [] if best.att is None else list(best.att.reshape(B * R, *best.att.shape[2:]).unbind(1))
        return assemble_output(
            best.seq.reshape(B * R, max_len),
            config,
            sum_logprobs=pool.sum[:, :R].reshape(-1),
            token_scores=None if best.tok is None else best.tok.reshape(B * R, -1),
            cross_attentions=attentions,
            lengths=pool.length[:, :R].reshape(-1),
            scores_penalised=pool.score[:, :R].reshape(-1),  # exactly what the pool was ranked by
        )
