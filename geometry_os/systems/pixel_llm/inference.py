"""Caption generation: ``generate_caption`` encodes the images once and hands the features to a
decoding strategy (a ``decoding_strategy`` component resolved through the registry by name or by the
generation mode it serves, with its own options; the core imports no plugin). Strategies return a
``GenerationOutput``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from geometry_os.errors import ComponentError, GeometryOSError, first_line

from .generation_config import GenerationConfig
from .resolution import resolve_strategy
from .vocabulary import undecodable_ids

__all__ = [
    "GenerationConfig",
    "GenerationLengthWarning",
    "GenerationOutput",
    "beam_search_decode",
    "generate_caption",
    "generate_output",
    "scored_caption",
]


class GenerationLengthWarning(UserWarning):
    """An explicitly set ``max_length`` / ``max_new_tokens`` is beyond the decoder's ``max_seq_len``."""


@dataclass
class GenerationOutput:
    """What a strategy produced for B images × ``num_return_sequences`` (rows grouped by image).

    ``sequences``: (rows, T) from ``<bos>``, ``<pad>`` after ``<eos>``, T the longest caption.
    ``sequence_scores``: sum of the generated tokens' log-probs (``<eos>`` included).
    ``scores_penalised``: ``sequence_scores / length ** length_penalty``, length = tokens after
    ``<bos>`` (what beam search ranks by). ``token_scores`` (rows, T-1): each token's log-prob
    (0 at padding), with ``output_scores``. ``cross_attentions``: one (rows, cross layers, heads, N)
    tensor per generated position (zeros after ``<eos>``), with ``output_attentions``.
    ``texts``: decoded captions (leading and trailing spaces stripped) when a tokenizer was given.
    ``rerank_scores`` (rows,): with ``rerank``, the score the beam candidates were re-ordered by
    (``rerank.word_dropout_scores``, nats).
    """

    sequences: torch.Tensor
    sequence_scores: torch.Tensor | None = None
    scores_penalised: torch.Tensor | None = None
    token_scores: torch.Tensor | None = None
    cross_attentions: list[torch.Tensor] | None = None
    texts: list[str] | None = field(default=None)
    rerank_scores: torch.Tensor | None = None


def _resolve_config(config: GenerationConfig | Mapping[str, Any] | None, overrides: dict[str, Any]) -> GenerationConfig:
    """``config`` with keyword overrides (HF style), validated together. Always re-validated: a
    ``model_copy(update=...)`` skips pydantic's checks, and a contradiction must not reach a strategy.
    Only the fields that were set are carried, so ``model_fields_set`` still tells them apart."""
    if isinstance(config, GenerationConfig):
        config = config.model_dump(exclude_unset=True)  # what was set stays "set" (see _model_defaults)
    return GenerationConfig.model_validate({**(config or {}), **overrides})


SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _model_defaults(config: GenerationConfig, model: Any, tokenizer: Any) -> GenerationConfig:
    """Fields the caller did not set: the model config's ``generation`` defaults, and bos/eos/pad ids from
    the tokenizer, else the model config (a GPT-2 captioner uses 50256 for all three; our own tokenizers
    1, 2, 0, the fields' defaults)."""
    defaults = getattr(getattr(model, "config", None), "generation", None) or {}
    fill = {k: v for k, v in defaults.items() if k not in config.model_fields_set and k not in SPECIAL_IDS}
    if "max_length" in config.model_fields_set:  # the caller's length wins over a default max_new_tokens
        fill.pop("max_new_tokens", None)
    for name in SPECIAL_IDS:
        if name in config.model_fields_set:
            continue
        for source in (tokenizer, getattr(model, "config", None)):
            value = getattr(source, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                fill[name] = value
                break
    return _resolve_config(config, fill) if fill else config


def _check_length(config: GenerationConfig, model: Any) -> None:
    """A length the user asked for beyond the decoder's reach: say it is cut (HF would run past it)."""
    limit = getattr(getattr(model, "decoder", None), "max_seq_len", None)
    if limit is None or config.total_length <= limit:
        return
    if config.max_new_tokens is not None and "max_new_tokens" in config.model_fields_set:
        asked = f"max_new_tokens={config.max_new_tokens}"
    elif config.max_new_tokens is None and "max_length" in config.model_fields_set:
        asked = f"max_length={config.max_length}"
    else:
        return
    warnings.warn(
        f"{asked} is beyond the model's max_seq_len={limit}: captions stop at {limit} tokens (<bos> included)",
        GenerationLengthWarning,
        stacklevel=3,
    )


def generate_caption(
    model: Any,
    images: torch.Tensor,
    config: GenerationConfig | Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    generator: torch.Generator | None = None,
    **overrides: Any,
) -> torch.Tensor | GenerationOutput:
    """Caption ``images`` (B, 3, H, W), or one image (3, H, W).

    Fields not set in ``config`` or ``overrides`` come from ``model.config.generation``; the bos/eos/pad
    ids from the tokenizer (else the model config). Returns the token ids (B * num_return_sequences, T), or a ``GenerationOutput`` when
    ``return_dict_in_generate``. Keyword ``overrides`` replace fields of ``config``. Sampling is
    reproducible with ``seed`` (in the config) or a ``torch.Generator`` on the model's device.
    The model is put in eval mode for the call and its training flag restored afterwards.

    ``max_new_tokens=0`` / ``max_length=1`` return the ``<bos>`` alone (score 0) from every strategy.
    A set length beyond the decoder's ``max_seq_len`` is cut there with a ``GenerationLengthWarning``.
    Raises ``ConfigError`` when ``suppress_tokens`` (with ``min_length``) leaves no token to generate or
    ``strategy_options`` do not fit the strategy, ``ComponentError`` for an unknown or failing strategy.
    """
    config = _model_defaults(_resolve_config(config, overrides), model, tokenizer)
    vocab_size = getattr(model.config, "vocab_size", None)
    extra = undecodable_ids(tokenizer, vocab_size) if vocab_size is not None else range(0)
    if extra:  # ids the tokenizer could not decode
        config = _resolve_config(config, {"suppress_tokens": sorted({*(config.suppress_tokens or ()), *extra})})
    if vocab_size is not None:
        config.check_vocabulary(vocab_size, getattr(getattr(model, "decoder", None), "max_seq_len", None))
    _check_length(config, model)
    resolved = resolve_strategy(config)
    component = resolved.component
    strategy = resolved.build()
    if images.dim() == 3:
        images = images.unsqueeze(0)
    device = model.device
    dtype = next(model.parameters()).dtype
    images = images.to(device=device, dtype=dtype if images.is_floating_point() else None)
    if generator is None and config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            features = model.encode(images)  # once: strategies expand the decoder cache, not images
            # re-ranking reads every beam candidate, then keeps num_return_sequences of them
            asked = config.model_copy(update={"num_return_sequences": config.num_beams}) if config.rerank else config
            try:
                out = strategy.decode(model, features, asked, generator=generator)
            except GeometryOSError:
                raise
            except Exception as exc:  # a plugin's bug: name it (the cause keeps the traceback)
                raise ComponentError(
                    f"{component.label} failed while decoding: {type(exc).__name__}: {first_line(exc)}"
                ) from exc
            if not isinstance(getattr(out, "sequences", None), torch.Tensor):
                raise ComponentError(
                    f"{component.label} returned {type(out).__name__} from decode(), expected a GenerationOutput"
                )
            if config.rerank:
                out = _reranked(model, features, out, config)
    finally:
        model.train(was_training)

    if tokenizer is not None:
        # stripped: a byte-level BPE with a prefix space decodes to " a cat" (HF decode() keeps it; users strip)
        out.texts = [tokenizer.decode(row.tolist(), skip_special_tokens=True).strip() for row in out.sequences]
    return out if config.return_dict_in_generate else out.sequences


def _reranked(model: Any, features: torch.Tensor, out: GenerationOutput, config: GenerationConfig) -> GenerationOutput:
    """The ``num_return_sequences`` best of each image's ``num_beams`` candidates in ``out`` by
    ``rerank.word_dropout_scores`` (ties: beam order), every per-row field taken along."""
    from .rerank import caption_lengths, word_dropout_scores

    K, R = config.num_beams, config.num_return_sequences
    B = features.shape[0]
    if out.sequences.shape[0] != B * K:
        raise ComponentError(
            f"rerank: expected {B} x {K} = {B * K} candidate rows (images x num_beams) from the decoding "
            f"strategy, got {out.sequences.shape[0]}"
        )
    scores = word_dropout_scores(model.decoder, features, out.sequences, config.pad_token_id, config.eos_token_id)
    if out.sequence_scores is not None:  # beam slots no caption filled (score -inf) stay last
        scores = scores.masked_fill(torch.isneginf(out.sequence_scores), float("-inf"))
    order = torch.sort(scores.view(B, K), dim=1, descending=True, stable=True).indices[:, :R]
    rows = (order + torch.arange(B, device=order.device)[:, None] * K).reshape(-1)
    longest = int(caption_lengths(out.sequences[rows], config.eos_token_id).max())
    return GenerationOutput(
        sequences=out.sequences[rows, :longest],
        sequence_scores=None if out.sequence_scores is None else out.sequence_scores[rows],
        scores_penalised=None if out.scores_penalised is None else out.scores_penalised[rows],
        token_scores=None if out.token_scores is None else out.token_scores[rows, : longest - 1],
        cross_attentions=None
        if out.cross_attentions is None
        else [a[rows] for a in out.cross_attentions[: longest - 1]],
        rerank_scores=scores[rows],
    )


def generate_output(model: Any, images: torch.Tensor, **options: Any) -> GenerationOutput:
    """``generate_caption(model, images, **options)`` with ``return_dict_in_generate`` on: the
    ``GenerationOutput`` for ``images`` (B, 3, H, W) or (3, H, W), with scores, and texts when a ``tokenizer``
    is given. ``options``: ``generate_caption``'s keyword arguments (``config``, ``tokenizer``, ``generator``,
    config fields). Raises what ``generate_caption`` raises (``ConfigError``, ``ComponentError``)."""
    out = generate_caption(model, images, **{**options, "return_dict_in_generate": True})
    if isinstance(out, torch.Tensor):  # bare sequences come only with return_dict_in_generate off
        raise AssertionError("generate_caption returned bare sequences with return_dict_in_generate on")
    return out


def scored_caption(out: GenerationOutput, row: int) -> tuple[str, float, float]:
    """Row ``row`` of ``out``: the caption text, its score (sum of token log-probs, nats) and its penalised
    score (``scores_penalised``).

    Raises ``GeometryOSError`` when ``out`` has no texts (generated without a tokenizer) and
    ``ComponentError`` when the decoding strategy returned no scores.
    """
    if out.texts is None:
        raise GeometryOSError("no caption texts: generate with a tokenizer to decode them")
    if out.sequence_scores is None or out.scores_penalised is None:
        raise ComponentError("the decoding strategy returned no sequence scores")
    return out.texts[row], float(out.sequence_scores[row]), float(out.scores_penalised[row])


def beam_search_decode(model: Any, images: torch.Tensor, num_beams: int = 5, **kwargs: Any) -> Any:
    """Beam-search captions; ``kwargs`` are ``generate_caption`` arguments / config fields."""
    return generate_caption(model, images, num_beams=num_beams, **kwargs)
