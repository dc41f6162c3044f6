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
and shorter captions lose fewer nats. Cost: one decoder forward per position over every candidate,
O(T^2) tokens per caption.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def caption_lengths(sequences: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Tokens per row (B, T ids from ``<bos>``) up to and including the first ``<eos>`` after ``<bos>``
    (T when a row has none): long tensor (B,)."""
    if sequences.shape[1] == 1:
        return torch.ones(sequences.shape[0], dtype=torch.long, device=sequences.device)
    is_eos = sequences[:, 1:] == eos_token_id
    return torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 2, sequences.shape[1])


@torch.no_grad()
def word_dropout_scores(
    decoder: torch.nn.Module,
    features: torch.Tensor,
    sequences: torch.Tensor,
    pad_token_id: int,
    eos_token_id: int,
) -> torch.Tensor:
    """The word-dropout log-likelihood (nats, float32, (rows,)) of each caption in ``sequences`` (rows, T:
    ``<bos>``, words, ``<eos>``, then anything) given its image's ``features`` (rows, N, D), summed over its
    words and ``<eos>`` (see the module docstring). ``decoder(input_ids, features) -> logits`` is any
    ``protocols.Decoder``, in eval mode (the caller's business: dropout would make the score random)."""
    lengths = caption_lengths(sequences, eos_token_id)
    total = torch.zeros(sequences.shape[0], dtype=torch.float32, device=sequences.device)
    for t in range(1, sequences.shape[1]):
        rows = (lengths > t).nonzero().squeeze(1)  # captions that have a token at position t
        if rows.numel() == 0:
            break
        context = sequences[rows, :t].clone()
        if t >= 2:  # the word before w_t is dropped; <bos> always stays
            context[:, t - 1] = pad_token_id
        logits = decoder(context, features[rows])[:, -1].float()
        total[rows] += F.log_softmax(logits, dim=-1).gather(1, sequences[rows, t : t + 1]).squeeze(1)
    return total
