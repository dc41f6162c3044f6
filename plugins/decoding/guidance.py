"""Classifier-free guidance against the caption prior (``GenerationConfig.guidance_scale``).

Every step scores the next token twice: conditioned on the image, and on the null image (all-zero
features, which a model trained with ``trainer.image_dropout`` has learnt to read as "no image": its
caption prior). The strategies then decode from::

    log p_guided = log p(token | prefix, null) + guidance_scale * (log p(token | prefix, image) - log p(token | prefix, null))

as HF's ``UnbatchedClassifierFreeGuidanceLogitsProcessor`` does (Ho & Salimans, "Classifier-Free
Diffusion Guidance", 2022; Sanchez et al., "Stay on topic with Classifier-Free Guidance", 2023).
``guidance_scale = 1`` is plain decoding; above 1, tokens the image supports more than the prior does
gain: a word the training captions never put after this prefix (a colour never seen with this shape)
is no longer ruled out by the prior alone.

The two branches keep separate caches and are reordered together, so greedy, sampling and beam search
drive a ``GuidedDecoder`` exactly as they drive the decoder it wraps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from geometry_os.systems.pixel_llm.plugin_api import reorder_cache


class GuidedCache:
    """The image branch's cache and the null branch's, with the same rows (``protocols.DecoderCache``)."""

    def __init__(self, cond: Any, uncond: Any):
        self.cond, self.uncond = cond, uncond

    @property
    def length(self) -> int:
        """Tokens already processed."""
        return int(self.cond.length)

    @property
    def batch_size(self) -> int:
        """Rows of each branch."""
        return int(self.cond.batch_size)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` in both branches."""
        self.cond.reorder(index)
        self.uncond.reorder(index)

    def reorder_groups(self, index: torch.Tensor, images: torch.Tensor | None = None) -> None:
        """Beam search's grouped reorder in both branches (a plain ``reorder`` where a cache lacks it)."""
        for cache in (self.cond, self.uncond):
            reorder_cache(cache, index, images)

    def expand(self, n: int) -> None:
        """Repeat every row ``n`` times in both branches."""
        self.cond.expand(n)
        self.uncond.expand(n)


class GuidedDecoder:
    """A decoder's ``init_cache``/``step`` with classifier-free guidance: ``step`` returns guided
    log-probabilities (rows, vocab), float32, in place of logits. Anything else is the wrapped decoder's.
    """

    # no static cache: two branches per step (``supports_static_cache`` is False)
    cross_kv = init_static_cache = static_step = None

    def __init__(self, decoder: Any, guidance_scale: float):
        self.decoder = decoder
        self.guidance_scale = float(guidance_scale)

    def __getattr__(self, name: str) -> Any:  # max_seq_len, vocab_size, ...
        if name == "decoder":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.decoder, name)

    def init_cache(self, features: torch.Tensor, max_length: int) -> GuidedCache:
        """Caches for the image ``features`` (B, N, D) and for the null image (zeros of that shape)."""
        null = features.new_zeros(features.shape)
        return GuidedCache(self.decoder.init_cache(features, max_length), self.decoder.init_cache(null, max_length))

    def step(self, input_ids: torch.Tensor, cache: GuidedCache, output_attentions: bool = False) -> Any:
        """Guided log-probs of the token after ``input_ids`` (rows, T_new); with ``output_attentions``,
        ``(log-probs, the image branch's cross-attention)``."""
        out = self.decoder.step(input_ids, cache.cond, output_attentions=output_attentions)
        cond, attn = out if output_attentions else (out, None)
        uncond = self.decoder.step(input_ids, cache.uncond)
        cond, uncond = F.log_softmax(cond.float(), dim=-1), F.log_softmax(uncond.float(), dim=-1)
        guided = uncond + self.guidance_scale * (cond - uncond)
        return (guided, attn) if output_attentions else guided


def guided(decoder: Any, config: Any) -> Any:
    """``decoder`` wrapped for ``config.guidance_scale`` (the decoder itself when it is 1)."""
    scale = getattr(config, "guidance_scale", 1.0)
    return decoder if scale == 1.0 else GuidedDecoder(decoder, scale)
