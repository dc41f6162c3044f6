"""Causal transformer decoder with cross-attention to image features, plus its KV cache.

GPT-2 style, pre-norm: causal self-attention -> cross-attention (on the layers chosen by
``num_cross_attention_layers``) -> GELU MLP; final LayerNorm; LM head tied to the token embedding.

Speed notes. Training: every attention is ``F.scaled_dot_product_attention`` (fused kernels), with
``is_causal`` instead of a mask tensor whenever the padding allows it; projections are fused (qkv,
cross kv). Generation: cross-attention K/V are computed once per image, self-attention K/V are
written in place into preallocated buffers, the LM head sees only the last position, and ``step``
calls functional ops directly (at one token per step, per-op overhead is most of the cost on CPU);
cross K/V stay per image, the queries of its rows (beams) folded into one attention (see ``KVCache``).
bf16 autocast on a CPU that only emulates bf16: see ``geometry_os.systems.pixel_llm.cpu_bf16``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from geometry_os.plugins.xattn import XAttnOptions
from geometry_os.systems.pixel_llm.plugin_api import attention, linear, options_with


def _linear(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``m(x)`` without ``nn.Module.__call__`` (used by ``step``)."""
    return F.linear(x, m.weight, m.bias)


def _norm(m: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


class KVCache:
    """Decoding state of a batch (see ``protocols.DecoderCache``).

    ``self_kv``: (layers, 2, rows, heads, max_length, head_dim), preallocated; positions < ``length``
    are filled. ``cross_kv``: (cross layers, 2, images, heads, N, head_dim), computed once per image
    and kept per image: rows ``i * group .. (i + 1) * group - 1`` belong to image ``i``, and their
    queries are folded into one attention over that image's keys (beams and returned sequences never
    copy the image's K/V). An arbitrary ``reorder`` gives every row its own copy (``group`` = 1).
    """

    def __init__(self, self_kv: torch.Tensor, cross_kv: torch.Tensor, max_length: int):
        self.self_kv = self_kv
        self.cross_kv = cross_kv
        self.max_length = max_length
        self.group = self_kv.shape[2] // cross_kv.shape[2]
        self._length = 0
        self._views()

    def _views(self) -> None:
        """Per-layer views (no copies), so that a step does no indexing of its own."""
        self.layers = list(self.self_kv.unbind(0))  # each (2, rows, heads, max_length, head_dim)
        self.cross = [tuple(kv.unbind(0)) for kv in self.cross_kv]  # each (k, v): (images, heads, N, head_dim)

    @property
    def length(self) -> int:
        """Number of positions filled so far."""
        return self._length

    @property
    def batch_size(self) -> int:
        """Number of rows (sequences) the cache holds."""
        return self.self_kv.shape[2]

    def _select_rows(self, index: torch.Tensor) -> None:
        """Self-attention rows ``index``, in place; only filled positions are copied, and a shorter
        index keeps using the front of the same buffer."""
        n, t = index.numel(), self._length
        kept = self.self_kv[:, :, :, :, :t].index_select(2, index)
        if n > self.batch_size:
            shape = list(self.self_kv.shape)
            shape[2] = n
            self.self_kv = self.self_kv.new_empty(shape)
        else:
            self.self_kv = self.self_kv[:, :, :n]
        self.self_kv[:, :, :, :, :t] = kept

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (repeats allowed), in place."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.self_kv.device)
        self._select_rows(index)
        if self.group > 1 or self.cross_kv.shape[2] != index.numel():  # each row its own image copy
            self.cross_kv = self.cross_kv.index_select(2, index // self.group)
        else:
            self.cross_kv = self.cross_kv.index_select(2, index)
        self.group = 1
        self._views()

    def reorder_groups(self, index: torch.Tensor, images: torch.Tensor | None = None) -> None:
        """``reorder`` for beam search, where the caller guarantees that the new rows are ``group``
        rows for each kept image, each taken from that image's rows: ``images`` are the kept images'
        positions (None: all of them). Image K/V are only narrowed to the kept images, never copied
        per row."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.self_kv.device)
        self._select_rows(index)
        if images is not None:
            self.cross_kv = self.cross_kv.index_select(2, images)
        self._views()

    def expand(self, n: int) -> None:
        """Repeat every row ``n`` times (``repeat_interleave``), in place.

        Raises:
            ValueError: for ``n < 1``.
        """
        if n < 1:
            raise ValueError(f"expand(n={n}): n must be >= 1")
        if n == 1:
            return
        t = self._length
        shape = list(self.self_kv.shape)
        shape[2] *= n
        grown = self.self_kv.new_empty(shape)
        grown[:, :, :, :, :t] = self.self_kv[:, :, :, :, :t].repeat_interleave(n, dim=2)
        self.self_kv = grown
        self.group *= n
        self._views()


class StaticKVCache:
    """Fixed-shape decoding state (HF ``cache_implementation="static"``), for steps captured once in
    a CUDA graph and replayed per token.

    ``self_kv`` (layers, 2, rows, heads, max_length, head_dim) and ``cross_kv`` (cross layers, 2,
    images, heads, N, head_dim) as in ``KVCache``; ``position`` is a (1,) long tensor on the device,
    the next position to write, advanced in place by ``LanguageDecoder.static_step`` so that a
    replayed graph moves on by itself. Rows never leave (finished rows keep decoding and the caller
    ignores them), so every tensor keeps its address between steps and between calls (``refill``).
    """

    def __init__(self, self_kv: torch.Tensor, cross_kv: torch.Tensor, max_length: int):
        self.self_kv = self_kv
        self.cross_kv = cross_kv
        self.max_length = max_length
        self.group = self_kv.shape[2] // cross_kv.shape[2]
        self.position = torch.zeros(1, dtype=torch.long, device=self_kv.device)
        self.positions = torch.arange(max_length, device=self_kv.device)
        self.layers = list(self_kv.unbind(0))
        self.cross = [tuple(kv.unbind(0)) for kv in cross_kv]

    @property
    def batch_size(self) -> int:
        """Number of rows (sequences) the cache holds."""
        return self.self_kv.shape[2]

    def refill(self, cross_kv: torch.Tensor) -> None:
        """Start again with other images' cross K/V (same shape), in place: position 0.

        Raises:
            ValueError: when ``cross_kv``'s shape differs from the cache's.
        """
        if cross_kv.shape != self.cross_kv.shape:
            raise ValueError(
                f"cross K/V of shape {tuple(cross_kv.shape)} do not fit this cache's {tuple(self.cross_kv.shape)}"
            )
        self.cross_kv.copy_(cross_kv)
        self.position.zero_()


class DecoderBlock(nn.Module):
    """Pre-norm block: causal self-attention, optional cross-attention, GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, cross_dim: int | None):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.has_cross = cross_dim is not None
        if cross_dim is not None:
            self.norm_x = nn.LayerNorm(dim)
            self.q_x = nn.Linear(dim, dim)
            self.kv_x = nn.Linear(cross_dim, 2 * dim)  # also maps the encoder width to the decoder's
            self.proj_x = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.drop = nn.Dropout(dropout)

    def _heads(self, t: torch.Tensor, B: int, n: int) -> torch.Tensor:
        """(B, T, n*D) or (B*T, n*D) -> (n, B, heads, T, head_dim), a view."""
        return t.view(B, -1, n, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def cross_kv(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """(2, B, heads, N, head_dim) cross-attention keys and values."""
        kv = linear(encoder_hidden_states, self.kv_x.weight, self.kv_x.bias)
        return self._heads(kv, encoder_hidden_states.shape[0], 2)

    def forward(
        self,
        x: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
    ) -> torch.Tensor:
        """One pre-norm decoder block: causal self-attention, cross-attention to ``encoder_hidden_states``
        (B, N, D) when the block has it, and the MLP; x (B, T, D) -> (B, T, D). ``mask``: the self-attention mask
        (None with ``is_causal``).
        """
        B, T, D = x.shape
        p = self.dropout if self.training else 0.0
        q, k, v = self._heads(linear(self.norm1(x), self.qkv.weight, self.qkv.bias), B, 3).unbind(0)
        y = attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        x = x + self.drop(linear(y.transpose(1, 2).reshape(B, T, D), self.proj.weight, self.proj.bias))
        if self.has_cross:
            q = self._heads(linear(self.norm_x(x), self.q_x.weight, self.q_x.bias), B, 1)[0]
            k, v = self.cross_kv(encoder_hidden_states).unbind(0)
            y = attention(q, k, v, dropout_p=p)
            x = x + self.drop(linear(y.transpose(1, 2).reshape(B, T, D), self.proj_x.weight, self.proj_x.bias))
        h = F.gelu(linear(self.norm2(x), self.fc1.weight, self.fc1.bias), approximate="tanh")
        return x + self.drop(linear(h, self.fc2.weight, self.fc2.bias))

    def step(
        self,
        x: torch.Tensor,
        B: int,
        kv: torch.Tensor,
        pos: int,
        mask: torch.Tensor | None,
        is_causal: bool,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward`` (without dropout) for x (B*T, D), the new tokens at positions pos..: writes
        their K/V into ``kv`` (2, B, heads, max_length, head_dim) in place and attends to every
        position < pos + T. Returns x and, with ``output_attentions``, the last position's
        cross-attention weights (B, heads, N)."""
        end = pos + x.shape[0] // B
        qkv = self._heads(_linear(self.qkv, _norm(self.norm1, x)), B, 3)
        kv[:, :, :, pos:end] = qkv[1:]
        k, v = kv[:, :, :, :end].unbind(0)
        q = qkv[0] if qkv.dtype == k.dtype else qkv[0].to(k.dtype)  # autocast may differ from cache
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self._after_self_attention(x, y, B, cross_kv, output_attentions)

    def static_step(
        self,
        x: torch.Tensor,
        B: int,
        kv: torch.Tensor,
        position: torch.Tensor,
        mask: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """``step`` for one new token per row at the (1,) tensor ``position``: its K/V are written
        with ``index_copy_`` and the query attends to every buffer position under ``mask``
        (1, 1, 1, max_length), so no shape or Python number depends on the position."""
        qkv = self._heads(_linear(self.qkv, _norm(self.norm1, x)), B, 3)
        kv.index_copy_(3, position, qkv[1:])
        k, v = kv.unbind(0)
        q = qkv[0] if qkv.dtype == k.dtype else qkv[0].to(k.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._after_self_attention(x, y, B, cross_kv, False)[0]

    def _after_self_attention(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        B: int,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rest of a decoding step after self-attention gave ``y``: output projection,
        cross-attention over the cached image K/V, MLP."""
        x = x + _linear(self.proj, y.transpose(1, 2).reshape(x.shape))
        attn = None
        if cross_kv is not None:
            k, v = cross_kv  # (images, heads, N, head_dim): the rows of an image share them
            images = k.shape[0]
            # queries of all rows (and positions) of an image folded into one attention over its keys
            q = _linear(self.q_x, _norm(self.norm_x, x)).view(images, -1, self.heads, self.head_dim).transpose(1, 2)
            q = q if q.dtype == k.dtype else q.to(k.dtype)
            if output_attentions:  # slow path: explicit softmax so the weights can be returned
                w = torch.softmax(q.float() @ k.float().transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
                y = w.to(v.dtype) @ v
                T = x.shape[0] // B
                attn = w.view(images, self.heads, B // images, T, -1)[:, :, :, -1].transpose(1, 2).flatten(0, 1)
            else:
                y = F.scaled_dot_product_attention(q, k, v)
            x = x + _linear(self.proj_x, y.transpose(1, 2).reshape(x.shape))
        h = F.gelu(_linear(self.fc1, _norm(self.norm2, x)), approximate="tanh")
        return x + _linear(self.fc2, h), attn


class LanguageDecoder(nn.Module):
    """Decoder (see ``protocols.Decoder``). Build with ``LanguageDecoder(XAttnOptions(...))`` or
    ``LanguageDecoder(vocab_size=..., embed_dim=..., ...)`` (keywords validated by ``XAttnOptions``)."""

    def __init__(self, opts: XAttnOptions | Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__()
        self.config = cfg = options_with(XAttnOptions, opts, kwargs)
        self.vocab_size = cfg.vocab_size
        self.embed_dim = cfg.embed_dim
        self.max_seq_len = cfg.max_seq_len
        self.num_layers = cfg.num_layers
        self.num_heads = cfg.num_heads
        self.pad_token_id = cfg.pad_token_id
        self.cross_attention_dim = cfg.cross_attention_dim or cfg.embed_dim
        self.cross_attention_layers = cfg.cross_attention_layers()
        # layer -> its index in the cache's cross K/V (None: that layer has no cross-attention)
        self._cross_slot: list[int | None] = [None] * cfg.num_layers
        for slot, layer in enumerate(self.cross_attention_layers):
            self._cross_slot[layer] = slot

        self.wte = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.embed_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                cfg.dropout,
                None if slot is None else self.cross_attention_dim,
            )
            for slot in self._cross_slot
        )
        self.norm = nn.LayerNorm(cfg.embed_dim)
        # Tied: the head reads wte.weight directly, so checkpoints hold no shared tensors.
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        # training only: each block's activations are recomputed in backward (torch.utils.checkpoint)
        self.gradient_checkpointing = False

        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * cfg.num_layers)  # GPT-2: keeps the residual stream's scale
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "proj_x.weight", "fc2.weight")):
                nn.init.normal_(p, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = _norm(self.norm, x)
        if self.lm_head is None:
            return linear(x, self.wte.weight)
        return linear(x, self.lm_head.weight, self.lm_head.bias)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, D). With a tied head, training on a CPU, the lookup's gradient is
        sparse: autograd adds its rows into the head's dense gradient of the same weight, instead of
        zero-filling a second (vocab, D) tensor and adding the two (base: 2 x 154 MB a step, ~7 % of a bf16
        step, docs/performance.md). ``wte.weight.grad`` stays dense, as the optimizers need."""
        if type(self.wte) is not nn.Embedding:  # wrapped (e.g. an adapter): its own forward
            return self.wte(input_ids)
        e = self.wte
        sparse = (
            self.lm_head is None
            and e.weight.requires_grad
            and torch.is_grad_enabled()
            and e.weight.device.type == "cpu"
            and not torch.compiler.is_compiling()
        )
        return F.embedding(input_ids, e.weight, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, sparse)

    @staticmethod
    def _self_attention_mask(attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
        """None when causal masking alone is exact (no mask, or only right padding: a real token
        never sees a pad), else a (B, 1, T, T) bool mask: causal & real keys. Each query also sees
        itself, so the rows of pads never become all-masked (which would give NaN)."""
        if attention_mask is None:
            return None
        real = attention_mask.bool()
        if not bool((real[:, 1:] & ~real[:, :-1]).any()):  # one host sync, outside the blocks
            return None
        idx = torch.arange(T, device=real.device)
        causal = idx[None, :] <= idx[:, None]
        return causal & (real[:, None, None, :] | (idx[None, :] == idx[:, None]))

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for every position; ``attention_mask`` (B, T) is 1 for real tokens.

        Raises:
            ValueError: for sequences longer than ``max_seq_len``.
        """
        B, T = input_ids.shape
        if T > self.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.max_seq_len}")
        mask = self._self_attention_mask(attention_mask, T)
        x = self.drop(self._embed(input_ids) + self.wpe.weight[:T])
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # activations recomputed in backward; non-reentrant, RNG (dropout) preserved
                x = checkpoint(block, x, encoder_hidden_states, mask, mask is None, use_reentrant=False)
            else:
                x = block(x, encoder_hidden_states, mask, mask is None)
        return self._logits(x)

    @torch.no_grad()
    def init_cache(self, encoder_hidden_states: torch.Tensor, max_length: int) -> KVCache:
        """Cross-attention K/V of every cross layer (once per image) and empty self-attention
        buffers for ``max_length`` tokens (in the dtype the projections produce, e.g. under autocast).

        Raises:
            ValueError: when ``max_length`` is not between 1 and ``max_seq_len``.
        """
        if not 0 < max_length <= self.max_seq_len:
            raise ValueError(f"max_length={max_length} must be between 1 and max_seq_len={self.max_seq_len}")
        cross_kv = self.cross_kv(encoder_hidden_states)
        B = encoder_hidden_states.shape[0]
        head_dim = self.embed_dim // self.num_heads
        self_kv = cross_kv.new_empty(self.num_layers, 2, B, self.num_heads, max_length, head_dim)
        return KVCache(self_kv, cross_kv, max_length)

    @torch.no_grad()
    def cross_kv(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """(cross layers, 2, B, heads, N, head_dim): every cross layer's K/V of the images."""
        return torch.stack([self.blocks[i].cross_kv(encoder_hidden_states) for i in self.cross_attention_layers])

    @torch.no_grad()
    def init_static_cache(self, encoder_hidden_states: torch.Tensor, max_length: int, rows: int) -> StaticKVCache:
        """A ``StaticKVCache`` for ``rows`` sequences (a multiple of the B images: ``rows // B``
        consecutive rows per image) of up to ``max_length`` tokens."""
        cross_kv = self.cross_kv(encoder_hidden_states)
        head_dim = self.embed_dim // self.num_heads
        # zeros, not empty: masked positions still meet V in the product, and 0 * NaN garbage is NaN
        self_kv = cross_kv.new_zeros(self.num_layers, 2, rows, self.num_heads, max_length, head_dim)
        return StaticKVCache(self_kv, cross_kv, max_length)

    @torch.no_grad()
    def static_step(self, input_ids: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """Feed one token per row, (rows, 1), at ``cache.position`` and advance it; logits (rows,
        vocab). Shapes and addresses are the same at every position, so the call can be captured
        in a CUDA graph. The caller keeps ``position < max_length`` (nothing is checked on the host)."""
        B = input_ids.shape[0]
        position = cache.position
        x = F.embedding(input_ids[:, 0], self.wte.weight) + self.wpe.weight.index_select(0, position)
        mask = (cache.positions <= position).view(1, 1, 1, -1)
        for block, kv, slot in zip(cast("list[DecoderBlock]", self.blocks), cache.layers, self._cross_slot):
            x = block.static_step(x, B, kv, position, mask, None if slot is None else cache.cross[slot])
        position.add_(1)
        return self._logits(x)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache: KVCache, output_attentions: bool = False) -> Any:
        """Feed (B, T_new) tokens at positions ``cache.length``..; returns logits (B, vocab) of the
        last one, or ``(logits, cross_attn)`` with cross_attn (B, cross layers, heads, N).

        Raises:
            ValueError: when the step would pass the cache's ``max_length`` or ``max_seq_len``, or the batch differs
                from the cache's.
        """
        B, T = input_ids.shape
        pos = cache.length
        end = pos + T
        if end > cache.max_length or end > self.max_seq_len:
            raise ValueError(
                f"step would reach length {end}, beyond the cache's max_length={cache.max_length} "
                f"or max_seq_len={self.max_seq_len}"
            )
        if B != cache.batch_size:
            raise ValueError(f"input_ids has batch {B} but the cache holds {cache.batch_size} rows")
        if T == 1 or pos == 0:  # one new token sees every cached key; a first block is plain causal
            mask, is_causal = None, T > 1
        else:  # a block of new tokens after a prefix: new token i sees keys <= pos + i
            idx = torch.arange(end, device=input_ids.device)
            mask, is_causal = idx[None, :] <= idx[pos:, None], False

        x = (F.embedding(input_ids, self.wte.weight) + self.wpe.weight[pos:end]).view(B * T, -1)
        attns = []
        for block, kv, slot in zip(cast("list[DecoderBlock]", self.blocks), cache.layers, self._cross_slot):
            cross_kv = None if slot is None else cache.cross[slot]
            x, attn = block.step(x, B, kv, pos, mask, is_causal, cross_kv, output_attentions)
            if attn is not None:
                attns.append(attn)
        cache._length = end
        logits = self._logits(x if T == 1 else x.view(B, T, -1)[:, -1])
        if output_attentions:
            return logits, torch.stack(attns, dim=1)
        return logits
