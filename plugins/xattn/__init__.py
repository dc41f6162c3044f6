"""The ``xattn`` decoder plugin: options and registration only.

Registering must stay cheap, so this module imports no torch; the model lives in ``model.py`` and is
imported by the core only when a decoder is built (the factory is a lazy ``"module:attr"`` string).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from geometry_os.systems.pixel_llm.plugin_api import hookimpl, num_heads_for


def cross_attention_layers(num_layers: int, k: int | None) -> tuple[int, ...]:
    """Indices of the layers that carry cross-attention.

    ``k=None`` means every layer. Otherwise the k layers are spread evenly and always include the
    last one: layer ``i`` has cross-attention iff ``i == round_half_up((j + 1) * num_layers / k) - 1``
    for some ``j`` in ``range(k)`` (computed in integers). E.g. 12 layers, k=4 -> (2, 5, 8, 11);
    6 layers, k=4 -> (1, 2, 4, 5); k=1 -> (num_layers - 1,).

    Raises:
        ValueError: when ``k`` is not between 1 and ``num_layers``.
    """
    if k is None:
        return tuple(range(num_layers))
    if not 1 <= k <= num_layers:
        raise ValueError(f"num_cross_attention_layers={k} must be between 1 and num_layers={num_layers}")
    return tuple((2 * (j + 1) * num_layers + k) // (2 * k) - 1 for j in range(k))


class XAttnOptions(BaseModel):
    """Causal transformer decoder with cross-attention to encoder features (GPT-2 style).

    ``cross_attention_dim``: width of the encoder features (None: same as ``embed_dim``); the
    cross-attention K/V projection maps from it. ``num_cross_attention_layers``: see
    ``cross_attention_layers`` for which layers get cross-attention. ``pad_token_id`` is carried for
    the caller (loss masking); the decoder itself only looks at ``attention_mask``.
    """

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(50000, gt=0)
    embed_dim: int = Field(768, gt=0)
    num_layers: int = Field(12, gt=0, le=256)  # bounded like PixelLLMConfig.text_num_layers
    num_heads: int | None = Field(
        None, gt=0, description="None: default_num_heads(embed_dim), heads of ~64 channels that divide it (12 for 768)"
    )
    max_seq_len: int = Field(512, gt=0)
    cross_attention_dim: int | None = Field(None, gt=0)
    num_cross_attention_layers: int | None = Field(None, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    tie_word_embeddings: bool = True
    pad_token_id: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check_shapes(self) -> XAttnOptions:
        self.num_heads = num_heads_for(self.embed_dim, self.num_heads)  # None: ~64 channels a head
        k = self.num_cross_attention_layers
        if k is not None and k > self.num_layers:
            raise ValueError(f"num_cross_attention_layers={k} must be between 1 and num_layers={self.num_layers}")
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} must be smaller than vocab_size={self.vocab_size}")
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} gives an empty MLP for embed_dim={self.embed_dim}")
        return self

    def cross_attention_layers(self) -> tuple[int, ...]:
        """Indices of the layers with cross-attention (see :func:`cross_attention_layers`)."""
        return cross_attention_layers(self.num_layers, self.num_cross_attention_layers)


@hookimpl
def register_decoders(register: Callable[..., Any]) -> None:
    """Register the ``xattn`` decoder (:class:`~.model.LanguageDecoder`, options :class:`XAttnOptions`)."""
    register("xattn", "geometry_os.plugins.xattn.model:LanguageDecoder", XAttnOptions)
