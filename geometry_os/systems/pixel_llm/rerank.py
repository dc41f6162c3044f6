"""Re-ranking beam candidates by their word-dropout likelihood (``GenerationConfig(rerank="word_dropout")``).

A captioner's language prior can overrule the image on the word right after one it has only seen with
other words: trained without a "red square", it follows "red" with a kind it saw red with, although the
image feature says square. Beam search usually has the right caption among its candidates, ranked
below. The word-dropout score rates each word w_t of a candidate (t >= 1, ``<eos>`` included) by

    log p(w_t | image, <bos>, w_1 .. w_{t-2}, <pad>)        (t >= 2; w_1 is scored after <bos> alone)

the caption's own words with the one just before w_t replaced by ``<pad>``: the input a model trained
with ``trainer.word_dropout`` (Bowman et al., 2016) has learnt to predict from, where the word before
cannot vouch for the word after, so the image decides it. Candidates are re-ordered by the sum, ties
keeping their beam order; re-ranking by the score of a second, differently conditioned model or view is
the usual remedy for compositional failures (Nikolaus et al., "Compositional Generalization in Image
Captioning", CoNLL 2019).

The score is the decoder's own, unnormalised sum: decoding options that change scores while
generating (``guidance_scale``, ``suppress_tokens``, penalties, ``length_penalty``) do not enter it,
and shorter captions lose fewer nats. Cost: one cached decoder step per position over two rows per
candidate (O(T) tokens per caption; the image's cross-attention K/V computed once): measured 1.0-1.7x
the time of the beam search that made the candidates (``benchmarks/bench_rerank.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .protocols import Decoder, reorder_cache


def caption_lengths(sequences: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Tokens per row (B, T ids from ``<bos>``) up to and including the first ``<eos>`` after ``<bos>``
    (T when a row has none): long tensor (B,)."""
    if sequences.shape[1] == 1:
        return torch.ones(sequences.shape[0], dtype=torch.long, device=sequences.device)
    is_eos = sequences[:, 1:] == eos_token_id
    return torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 2, sequences.shape[1])


@torch.no_grad()
def word_dropout_scores(
    decoder: Decoder,
    features: torch.Tensor,
    sequences: torch.Tensor,
    pad_token_id: int,
    eos_token_id: int,
) -> torch.Tensor:
    """The word-dropout log-likelihood (nats, float32, (rows,)) of each caption in ``sequences`` (rows, T:
    ``<bos>``, words, ``<eos>``, then anything) given its image's ``features``, summed over its words and
    ``<eos>`` (see the module docstring). ``features``: (rows, N, D), one per caption, or (images, N, D)
    with rows = images x k, the captions of image i in rows ``i * k .. (i + 1) * k - 1`` (beam search's
    order). ``decoder`` is any ``protocols.Decoder``, in eval mode (the caller's business: dropout would
    make the score random).

    Raises:
        ValueError: when rows is not a multiple of the number of images in ``features``.
    """
    rows, images = sequences.shape[0], features.shape[0]
    if rows == 0:
        return torch.zeros(0, dtype=torch.float32, device=sequences.device)
    if images == 0 or rows % images:
        raise ValueError(f"word_dropout_scores: {rows} captions for {images} images (need a multiple)")
    lengths = caption_lengths(sequences, eos_token_id)
    last = int(lengths.max()) - 1  # the last position scored
    total = torch.zeros(rows, dtype=torch.float32, device=sequences.device)
    if last < 1:
        return total
    # Two cache rows per caption, interleaved: 2j reads the caption itself, 2j + 1 the same prefix with
    # <pad> at the newest position, whose logits score the next word. Before each step the odd rows get
    # the even rows' K/V again, so every position is one step over all rows.
    cache = decoder.init_cache(features, last)
    cache.expand(2 * rows // images)
    pairs = torch.arange(rows, device=sequences.device).repeat_interleave(2) * 2  # 0, 0, 2, 2, ...
    pad = torch.full_like(sequences[:, :1], pad_token_id)
    for t in range(1, last + 1):
        if t == 1:  # w_1 is scored after <bos> alone
            ids = sequences[:, :1].repeat_interleave(2, dim=0)
        else:
            if t >= 3:  # rows 2j + 1 hold <pad> at t - 2: take row 2j's prefix instead
                reorder_cache(cache, pairs)  # the pairs stay with their image: no copy of its K/V
            ids = torch.stack([sequences[:, t - 1 : t], pad], dim=1).view(2 * rows, 1)
        logits = decoder.step(ids, cache)[1::2].float()
        word = F.log_softmax(logits, dim=-1).gather(1, sequences[:, t : t + 1]).squeeze(1)
        total += word.masked_fill(lengths <= t, 0.0)
    return total
