"""How to generate captions: a pydantic model with HuggingFace ``GenerationConfig`` names.

No torch here, so configs can be validated (CLI, config files) without loading a model. Lengths
count tokens the HF way for a decoder whose only prompt is ``<bos>``: ``max_length`` and
``min_length`` include the ``<bos>``; ``max_new_tokens`` does not.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .config import StrictModel


class GenerationConfig(StrictModel):
    """Decoding options, validated together: a contradictory combination is an error naming its field.

    ``max_length`` is capped at the decoder's ``max_seq_len`` when generating.
    ``min_length`` bans ``<eos>`` while the caption (with ``<bos>``) is shorter than it, as HF does.
    ``strategy`` names a ``decoding_strategy`` component; None picks ``beam`` when ``num_beams > 1``,
    else ``sample`` when ``do_sample``, else ``greedy``.
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
    suppress_tokens: list[int] | None = Field(
        None, description="token ids never generated (generate_caption adds the ids its tokenizer cannot decode)"
    )
    bos_token_id: int = Field(1, ge=0)
    eos_token_id: int = Field(2, ge=0)
    pad_token_id: int = Field(0, ge=0)
    seed: int | None = Field(None, ge=0, description="seeds sampling for reproducible captions")
    output_scores: bool = Field(False, description="return per-token log-probs (token_scores)")
    output_attentions: bool = Field(False, description="return cross-attention weights per token")
    return_dict_in_generate: bool = False
    strategy: str | None = Field(None, min_length=1, description="decoding_strategy component name")
    cache_implementation: Literal["dynamic", "static"] | None = Field(
        None,
        description="'static': fixed-shape KV cache, and on CUDA the decoder step captured once in a CUDA graph "
        "(greedy and sampling; HF's name); 'dynamic': rows leave the cache as they finish; None: static on CUDA "
        "where the decoder supports it and no attentions are asked for, else dynamic",
    )

    @property
    def total_length(self) -> int:
        """Maximum caption length in tokens, ``<bos>`` included (before the decoder's cap)."""
        return self.max_length if self.max_new_tokens is None else self.max_new_tokens + 1

    @property
    def strategy_name(self) -> str:
        if self.strategy is not None:
            return self.strategy
        if self.num_beams > 1:
            return "beam"
        return "sample" if self.do_sample else "greedy"

    @model_validator(mode="after")
    def _check_combination(self) -> "GenerationConfig":
        if self.min_length > self.total_length:
            source = "max_new_tokens + 1" if self.max_new_tokens is not None else "max_length"
            raise ValueError(f"min_length={self.min_length} exceeds {source}={self.total_length}")
        if self.eos_token_id == self.pad_token_id:
            raise ValueError(f"eos_token_id and pad_token_id must differ (both {self.eos_token_id})")
        if self.do_sample and self.num_beams > 1:
            raise ValueError(f"do_sample=True with num_beams={self.num_beams}: beam sampling is not supported")
        name = self.strategy_name
        if name == "greedy" and (self.do_sample or self.num_beams > 1):
            raise ValueError("strategy='greedy' contradicts do_sample=True / num_beams > 1")
        if name == "sample" and self.num_beams > 1:
            raise ValueError(f"strategy='sample' contradicts num_beams={self.num_beams}")
        if name == "greedy" and self.num_return_sequences > 1:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} needs sampling or beam search "
                "(greedy decoding returns one sequence per image)"
            )
        if self.cache_implementation == "static" and (name == "beam" or self.output_attentions):
            what = "beam search" if name == "beam" else "output_attentions=True"
            raise ValueError(f"cache_implementation='static' supports greedy and sampling without attentions, not {what}")
        if name == "beam" and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} must be <= num_beams={self.num_beams}"
            )
        return self
