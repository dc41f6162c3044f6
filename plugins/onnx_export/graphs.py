"""The three graphs an exported model is made of, as plain ``nn.Module``s that ``torch.onnx.export``
traces: the encoder, the decoder's cross-attention K/V (once per image) and one decoder step.

The step takes the self-attention cache as an input and returns it one position longer (the concat
form of a KV cache that ONNX runtimes expect, as HF Optimum exports decoders), where
``LanguageDecoder.step`` writes into preallocated buffers in place; the arithmetic is the same
functional ops as ``DecoderBlock.step`` (pre-norm self-attention, cross-attention, tanh-GELU MLP),
reading the decoder's own weights.

Only the components named in ``SUPPORTED`` are exported: the step graph is written against the
``xattn`` decoder's layout, and an encoder is exported only where its forward is known to trace to a
static graph (``vit``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geometry_os.errors import ComponentError

SUPPORTED = {"encoder": ("vit",), "decoder": ("xattn",)}


def check_supported(config: Any, source: str) -> None:
    """Raise ``ComponentError`` (one line naming ``source``) unless every component of ``config``
    (a ``PixelLLMConfig``) is one the exporter handles."""
    for kind, names in SUPPORTED.items():
        name = getattr(config, kind)
        if name not in names:
            raise ComponentError(
                f"{source}: {kind} {name!r} cannot be exported to ONNX (the exporter supports "
                f"{kind} {', '.join(repr(n) for n in names)})"
            )


def _linear(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, m.weight, m.bias)


def _norm(m: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


class EncoderGraph(nn.Module):
    """pixel_values (B, 3, S, S) float32 -> encoder_hidden_states (B, N, D)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, S, S) float32 -> encoder_hidden_states (B, N, D)."""
        return self.encoder(pixel_values)


class CrossKVGraph(nn.Module):
    """encoder_hidden_states (B, N, D_enc) -> cross_kv (cross layers, 2, B, heads, N, head_dim): the
    keys and values every cross-attention layer reads, computed once per image."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder: Any = decoder  # the xattn LanguageDecoder: its blocks and tables are read directly

    def forward(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """encoder_hidden_states (B, N, D_enc) -> cross_kv (cross layers, 2, B, heads, N, head_dim)."""
        blocks = self.decoder.blocks
        return torch.stack([blocks[i].cross_kv(encoder_hidden_states) for i in self.decoder.cross_attention_layers])


class DecoderStepGraph(nn.Module):
    """One token per row at position ``past_length`` (read from the cache's shape).

    input_ids (B, 1) int64, past_self_kv (layers, 2, B, heads, past_length, head_dim), cross_kv as
    ``CrossKVGraph`` gives it -> logits (B, vocab) and present_self_kv (..., past_length + 1, ...).
    """

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder: Any = decoder  # the xattn LanguageDecoder: its blocks and tables are read directly

    def forward(
        self, input_ids: torch.Tensor, past_self_kv: torch.Tensor, cross_kv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, 1), past_self_kv (layers, 2, B, heads, P, head_dim), cross_kv -> logits (B, vocab) and
        present_self_kv (layers, 2, B, heads, P + 1, head_dim).
        """
        d = self.decoder
        B = input_ids.shape[0]
        pos = past_self_kv.shape[4]
        x = F.embedding(input_ids[:, 0], d.wte.weight) + d.wpe.weight[pos]  # (B, D)
        presents = []
        for layer, (block, slot) in enumerate(zip(d.blocks, d._cross_slot)):
            qkv = _linear(block.qkv, _norm(block.norm1, x)).view(B, 3, block.heads, 1, block.head_dim)
            k = torch.cat([past_self_kv[layer, 0], qkv[:, 1]], dim=2)
            v = torch.cat([past_self_kv[layer, 1], qkv[:, 2]], dim=2)
            presents.append(torch.stack([k, v]))
            y = F.scaled_dot_product_attention(qkv[:, 0], k, v)  # one query sees every cached key
            x = x + _linear(block.proj, y.reshape(B, -1))
            if slot is not None:
                q = _linear(block.q_x, _norm(block.norm_x, x)).view(B, block.heads, 1, block.head_dim)
                y = F.scaled_dot_product_attention(q, cross_kv[slot, 0], cross_kv[slot, 1])
                x = x + _linear(block.proj_x, y.reshape(B, -1))
            x = x + _linear(block.fc2, F.gelu(_linear(block.fc1, _norm(block.norm2, x)), approximate="tanh"))
        return d._logits(x), torch.stack(presents)
