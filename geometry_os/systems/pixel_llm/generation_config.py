"""How to generate captions: a pydantic model with HuggingFace ``GenerationConfig`` names.

No torch here, so configs can be validated (CLI, config files) without loading a model. Lengths
count tokens the HF way for a decoder whose only prompt is ``<bos>``: ``max_length`` and
``min_length`` include the ``<bos>``; ``max_new_tokens`` does not. ``max_new_tokens=0`` (or
``max_length=1``) asks for no new tokens: every strategy returns the ``<bos>`` alone, scored 0.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from geometry_os.errors import ConfigError

from .strict import StrictModel

# HF's generation modes (``transformers.GenerationConfig.get_generation_mode``: greedy search, sampling,
# beam search), by short name. A mode is what a config asks for; which registered decoding strategy
# serves it is the registry's business (strategies declare the modes they serve).
GREEDY, SAMPLE, BEAM = "greedy", "sample", "beam"
GENERATION_MODES = (GREEDY, SAMPLE, BEAM)
# Options only sampling reads: set in a mode that does not sample, they would be ignored.
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "seed")
NOT_SAMPLING = (GREEDY, BEAM)


class ModelLimits(Protocol):
    """What ``GenerationConfig.for_model`` reads from a model's config (``PixelLLMConfig`` has it all)."""

    max_seq_len: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int


class GenerationConfig(StrictModel):
    """Decoding options, validated together: a contradictory combination is an error naming its field.

    ``max_length`` is capped at the decoder's ``max_seq_len`` when generating (``generate_caption``
    says so with a ``GenerationLengthWarning`` when the length was set explicitly).
    Sampling options (``temperature``, ``top_k``, ``top_p``, ``seed``) with the ``greedy`` or ``beam``
    strategy are an error (HF only warns): they would be ignored. ``do_sample=True`` selects sampling.
    ``min_length`` bans ``<eos>`` while the caption (with ``<bos>``) is shorter than it, as HF does.
    The generation mode (``generation_mode``) is ``beam`` when ``num_beams > 1``, else ``sample`` when
    ``do_sample``, else ``greedy``; a ``strategy`` named after a mode asks for that mode. ``strategy``
    names a ``decoding_strategy`` component; None: the registered strategy serving the mode (see
    ``resolution.resolve_strategy``). ``strategy_options`` go to the strategy, validated by its options
    model when the strategy is resolved.
    """

    max_length: int = Field(64, ge=1, description="caption length in tokens, <bos> and <eos> included")
    max_new_tokens: int | None = Field(None, ge=0, description="tokens after <bos>; overrides max_length")
    min_length: int = Field(0, ge=0, description="<eos> is banned while the caption is shorter than this")
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    num_beams: int = Field(1, ge=1)
    num_return_sequences: int = Field(1, ge=1)
    length_penalty: float = Field(1.0, description="beam score = sum_logprobs / length ** length_penalty")
    early_stopping: bool | Literal["never"] = False
    no_repeat_ngram_size: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    guidance_scale: float = Field(
        1.0,
        ge=0,
        description="classifier-free guidance against the caption prior (HF's name): each token is scored by "
        "log p(null) + scale * (log p(image) - log p(null)), the null image being all-zero features; 1: off",
    )
    rerank: Literal["word_dropout"] | None = Field(
        None,
        description="re-order beam search's num_beams captions by log p(each word | image, the words before it with "
        "the one just before replaced by <pad>), so that the image, not the word before, decides each word (best "
        "with a model trained with trainer.word_dropout; see rerank.py); None: the beam order",
    )
    suppress_tokens: list[int] | None = Field(
        None, description="token ids never generated (generate_caption adds the ids its tokenizer cannot decode)"
    )
    bos_token_id: int = Field(1, ge=0, description="unless set: the tokenizer's (or the model config's) id")
    eos_token_id: int = Field(
        2, ge=0, description="unless set: the tokenizer's (or the model config's) id; may equal pad"
    )
    pad_token_id: int = Field(0, ge=0, description="unless set: the tokenizer's (or the model config's) id")
    seed: int | None = Field(None, ge=0, description="seeds sampling for reproducible captions")
    output_scores: bool = Field(False, description="return per-token log-probs (token_scores)")
    output_attentions: bool = Field(False, description="return cross-attention weights per token")
    return_dict_in_generate: bool = False
    strategy: str | None = Field(
        None,
        min_length=1,
        description="decoding_strategy component name (None: the strategy serving the generation mode)",
    )
    strategy_options: dict[str, Any] = Field(
        default_factory=dict, description="the decoding strategy's own options (checked by its options model)"
    )
    cache_implementation: Literal["dynamic", "static"] | None = Field(
        None,
        description="'static': fixed-shape KV cache, and on CUDA the decoder step captured once in a CUDA graph "
        "(greedy and sampling; HF's name); 'dynamic': rows leave the cache as they finish; None: static on CUDA "
        "where the decoder supports it and no attentions are asked for, else dynamic",
    )

    @classmethod
    def for_model(cls, config: ModelLimits, **fields: Any) -> GenerationConfig:
        """Decoding options sized for a model: ``max_length`` its ``max_seq_len`` (the longest caption it
        can decode, in tokens) and its ``<bos>``/``<eos>``/``<pad>`` ids, with ``fields`` on top.

        ``config``: a ``PixelLLMConfig`` (``model.config``) or anything with those four fields.
        Raises ``pydantic.ValidationError`` for a contradictory combination, as the constructor does.
        """
        sized = dict(
            max_length=config.max_seq_len,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        )
        return cls(**{**sized, **fields})

    @property
    def total_length(self) -> int:
        """Maximum caption length in tokens, ``<bos>`` included (before the decoder's cap)."""
        return self.max_length if self.max_new_tokens is None else self.max_new_tokens + 1

    @property
    def generation_mode(self) -> str:
        """HF's generation mode asked for: ``strategy`` when it names a mode, else ``beam`` for
        ``num_beams > 1``, ``sample`` for ``do_sample``, ``greedy`` otherwise."""
        if self.strategy in GENERATION_MODES:
            return self.strategy
        if self.num_beams > 1:
            return BEAM
        return SAMPLE if self.do_sample else GREEDY

    @property
    def strategy_name(self) -> str:
        """``strategy`` when set, else the generation mode (which a strategy of the same name serves
        in the built-in registry)."""
        return self.strategy if self.strategy is not None else self.generation_mode

    def _rules_mode(self) -> str | None:
        """The mode whose rules apply: None for a strategy not named after a mode (it decides alone)."""
        return self.generation_mode if self.strategy is None or self.strategy in GENERATION_MODES else None

    @model_validator(mode="after")
    def _check_combination(self) -> GenerationConfig:
        if self.min_length > self.total_length:
            source = "max_new_tokens + 1" if self.max_new_tokens is not None else "max_length"
            raise ValueError(f"min_length={self.min_length} exceeds {source}={self.total_length}")
        if self.do_sample and self.num_beams > 1:
            raise ValueError(f"do_sample=True with num_beams={self.num_beams}: beam sampling is not supported")
        name = self._rules_mode()
        if name == GREEDY and (self.do_sample or self.num_beams > 1):
            raise ValueError(f"strategy={name!r} contradicts do_sample=True / num_beams > 1")
        if name == SAMPLE and self.num_beams > 1:
            raise ValueError(f"strategy={name!r} contradicts num_beams={self.num_beams}")
        if name == GREEDY and self.num_return_sequences > 1:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} needs sampling or beam search "
                "(greedy decoding returns one sequence per image)"
            )
        if self.cache_implementation == "static" and self.guidance_scale != 1.0:
            raise ValueError(
                f"cache_implementation='static' does not support guidance_scale={self.guidance_scale} "
                "(two branches per step)"
            )
        if self.cache_implementation == "static" and (name == BEAM or self.output_attentions):
            what = "beam search" if name == BEAM else "output_attentions=True"
            raise ValueError(
                f"cache_implementation='static' supports greedy and sampling without attentions, not {what}"
            )
        if self.rerank and self.num_beams < 2:
            raise ValueError(f"rerank={self.rerank!r} re-orders beam search's candidates: it needs num_beams > 1")
        if name == BEAM and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences={self.num_return_sequences} must be <= num_beams={self.num_beams}")
        if name in NOT_SAMPLING:
            ignored = [f"{key}={getattr(self, key)}" for key in SAMPLING_OPTIONS if self._sets(key)]
            if ignored:
                how = f"beam search (num_beams={self.num_beams})" if name == BEAM else "greedy decoding"
                one = len(ignored) == 1
                raise ValueError(
                    f"{', '.join(ignored)} {'is a sampling option' if one else 'are sampling options'}, which {how} "
                    f"would ignore: set do_sample=True (strategy 'sample') or leave {'it' if one else 'them'} out"
                )
        return self

    def _sets(self, key: str) -> bool:
        """Whether sampling option ``key`` differs from its default (would change a sampled caption)."""
        return getattr(self, key) != type(self).model_fields[key].default

    def check_vocabulary(self, vocab_size: int, max_seq_len: int | None = None) -> None:
        """Refuse (``ConfigError``, one line) a config under which some decoding step has no token left to
        choose (its scores would be NaN), or beam search has fewer possible captions than it must return.

        ``suppress_tokens`` bans ids for the whole caption; ``min_length`` also bans ``<eos>`` while the
        caption (with ``<bos>``) is shorter than it. ``vocab_size``: the model's output size;
        ``max_seq_len``: the decoder's length cap, if any.
        """
        banned = {t for t in self.suppress_tokens or () if 0 <= t < vocab_size}
        eos = self.eos_token_id < vocab_size and self.eos_token_id not in banned
        words = vocab_size - len(banned) - int(eos)  # tokens other than <eos> that may be generated
        steps = min(self.total_length, max_seq_len or self.total_length) - 1
        if steps <= 0 or words > 0:
            needed = None
        elif not eos:
            needed = f"suppress_tokens bans all {vocab_size} tokens of the vocabulary"
        elif self.min_length > 1:
            needed = (
                f"suppress_tokens bans every token but eos_token_id={self.eos_token_id}, which "
                f"min_length={self.min_length} bans at the first step"
            )
        else:
            needed = None
        if needed:
            raise ConfigError(f"{needed}: no token can be generated")
        if self._rules_mode() == BEAM and self.num_return_sequences > 1 and steps > 0:
            possible = _distinct_captions(words, eos, steps, self.min_length, self.num_return_sequences)
            if possible < self.num_return_sequences:
                raise ConfigError(
                    f"num_return_sequences={self.num_return_sequences}: suppress_tokens leaves only {possible} "
                    f"possible caption(s) of at most {steps} new tokens"
                )


def _distinct_captions(words: int, eos: bool, steps: int, min_length: int, cap: int) -> int:
    """How many different captions (counted up to ``cap``) of at most ``steps`` new tokens can be made
    from ``words`` non-``<eos>`` tokens: those ending in ``<eos>`` where it is allowed (position
    t >= min_length, <bos> at 0), plus the unfinished ones of exactly ``steps`` words."""
    if words >= cap:  # the unfinished captions alone are enough (steps >= 1 here)
        return cap
    total = words**steps  # an exact integer: words < cap <= num_beams keeps it modest
    if eos:
        for t in range(max(1, min_length), steps + 1):
            total += words ** (t - 1)  # t - 1 words, then <eos> (0 ** 0 == 1: the caption "<eos>")
            if total >= cap:
                return cap
    return min(total, cap)
