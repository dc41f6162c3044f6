"""Vision Transformer encoder: images (B, C, H, W) -> patch features (B, N, D), or (B, 1 + N, D) with
``class_token`` (the CLS feature first).

By default there is no CLS token: the decoder cross-attends to every patch, and ``patch_grid`` maps
the last N features back onto the image so that attention can be drawn on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from geometry_os.plugins.vit import ViTOptions
from geometry_os.systems.pixel_llm.plugin_api import attention, bf16, linear, options_with, upcast_bf16


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table (rows*cols, dim), as in MAE: the first half of the channels
    encodes the column, the second half the row, each as [sin, cos] over dim/4 frequencies."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def axis(n: int) -> torch.Tensor:  # (n, dim/2)
        angles = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    col = axis(cols)[None, :, :].expand(rows, cols, dim // 2)
    row = axis(rows)[:, None, :].expand(rows, cols, dim // 2)
    return torch.cat([col, row], dim=-1).reshape(rows * cols, dim).float()


class ConvStem(nn.Sequential):
    """Early convolutions (Xiao et al., 2021, "Early Convolutions Help Transformers See Better"):
    log2(patch) stride-2 3x3 conv-BatchNorm-ReLU layers (widths 32, 64, ..., at most ``dim``), then a
    1x1 conv to ``dim``. Maps (B, C, H, W) to the same (B, dim, H/patch, W/patch) grid as a patchify
    conv, but sees shapes across patch borders. PyTorch's default initialisation (as measured)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        layers: list[nn.Module] = []
        width = in_channels
        for i in range(patch_size.bit_length() - 1):
            out = min(dim, 32 * 2**i)
            layers += [nn.Conv2d(width, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        super().__init__(*layers, nn.Conv2d(width, dim, 1))

    def reset_parameters(self) -> None:
        """Re-initialise every sub-layer as PyTorch does on construction."""
        for m in self.modules():
            reset = getattr(m, "reset_parameters", None)
            if m is not self and callable(reset):
                reset()


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)`` (Radford et al. 2021, OpenAI CLIP code)."""
    return x * torch.sigmoid(1.702 * x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU (GPT-2's ``gelu_new``, SigLIP's ``gelu_pytorch_tanh``)."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": gelu_tanh,
    "quick_gelu": quick_gelu,
}


class Block(nn.Module):
    """Pre-norm transformer block: one fused qkv projection, SDPA (fused kernels), GELU-family MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, eps: float = 1e-5, act: str = "gelu"):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.act = ACTIVATIONS[act]
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One pre-norm transformer block: x (B, N, D) -> (B, N, D)."""
        B, N, D = x.shape
        qkv = linear(self.norm1(x), self.qkv.weight, self.qkv.bias).view(B, N, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        y = attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(linear(y.transpose(1, 2).reshape(B, N, D), self.proj.weight, self.proj.bias))
        return x + self.drop(
            linear(self.act(linear(self.norm2(x), self.fc1.weight, self.fc1.bias)), self.fc2.weight, self.fc2.bias)
        )


class VisionEncoder(nn.Module):
    """ViT encoder. Build with ``VisionEncoder(ViTOptions(...))`` or ``VisionEncoder(image_size=...,
    patch_size=..., ...)`` (keywords are validated through ``ViTOptions``).

    Any image size whose sides are multiples of ``patch_size`` works: a learned position table is
    bicubically resized to the patch grid, a sin-cos table is computed for it.
    """

    def __init__(self, opts: ViTOptions | Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__()
        self.config = cfg = options_with(ViTOptions, opts, kwargs)
        self.embed_dim = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.grid = (cfg.image_size // cfg.patch_size, cfg.image_size // cfg.patch_size)
        num_patches = self.grid[0] * self.grid[1]

        if cfg.stem == "conv":
            self.patch_embed: nn.Module = ConvStem(cfg.in_channels, cfg.embed_dim, cfg.patch_size)
        else:
            self.patch_embed = nn.Conv2d(
                cfg.in_channels, cfg.embed_dim, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias
            )
        # CLS token (pretrained layouts only); its position is row 0 of the table
        self.extra_tokens = 1 if cfg.class_token else 0
        if cfg.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.extra_tokens + num_patches, cfg.embed_dim))
        else:  # fixed: not saved in checkpoints, always recomputed
            self.register_buffer("pos_embed", sincos_2d(cfg.embed_dim, *self.grid)[None], persistent=False)
        # Position tables for other grids: (rows, cols) -> (stamp, table); see _position.
        self._pos_cache: dict[tuple[int, int], tuple[tuple, torch.Tensor]] = {}
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.pre_norm:
            self.norm_pre = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.dropout, cfg.norm_eps, cfg.act)
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.final_norm else nn.Identity()
        # training only: each block's activations are recomputed in backward (torch.utils.checkpoint)
        self.gradient_checkpointing = False

        self.apply(self._init_weights)
        if isinstance(self.patch_embed, ConvStem):
            self.patch_embed.reset_parameters()
        if cfg.pos_embed == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if cfg.class_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d) and m.kernel_size == m.stride:  # patchify: a Linear on patches (MAE);
            # also the conv stem's final 1x1 conv, which ConvStem.reset_parameters re-initialises after
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the patch features for an image of this size (N = rows * cols, row-major; they
        are the last N output rows, after the CLS feature when there is one)."""
        return height // self.patch_size, width // self.patch_size

    def _resize_table(self, rows: int, cols: int) -> torch.Tensor:
        gh, gw = self.grid
        extra, patches = self.pos_embed[:, : self.extra_tokens], self.pos_embed[:, self.extra_tokens :]
        table = patches.reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()
        table = F.interpolate(table, size=(rows, cols), mode="bicubic", align_corners=False)
        table = table.permute(0, 2, 3, 1).reshape(1, rows * cols, -1).to(self.pos_embed.dtype)
        return torch.cat([extra, table], dim=1) if self.extra_tokens else table  # the CLS row as it is

    def _position(self, rows: int, cols: int) -> torch.Tensor:
        """(1, extra + rows*cols, D) position table for a patch grid (extra: 1 with a class token).

        Tables for other grids are cached per size. A learned table is resized afresh while it can
        receive gradients (training), and the cache stamp includes the parameter's version counter,
        so an optimizer step or ``load_state_dict`` never leaves a stale table behind.
        """
        if (rows, cols) == self.grid:
            return self.pos_embed
        learned = isinstance(self.pos_embed, nn.Parameter)
        if torch.compiler.is_compiling() or (learned and torch.is_grad_enabled() and self.pos_embed.requires_grad):
            return self._resize_table(rows, cols) if learned else self._sincos(rows, cols)
        p = self.pos_embed
        stamp = (p.device, p.dtype, p.data_ptr(), p._version if learned else 0)
        hit = self._pos_cache.get((rows, cols))
        if hit is None or hit[0] != stamp:
            hit = (stamp, self._resize_table(rows, cols) if learned else self._sincos(rows, cols))
            self._pos_cache[(rows, cols)] = hit
        return hit[1]

    def _sincos(self, rows: int, cols: int) -> torch.Tensor:
        table = sincos_2d(self.embed_dim, rows, cols)[None]
        return table.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """The stem: (B, C, H, W) -> (B, D, rows, cols)."""
        if not upcast_bf16(images):
            return self.patch_embed(images)
        with torch.autocast("cpu", enabled=False):  # emulated bf16, see cpu_bf16
            if isinstance(self.patch_embed, ConvStem):  # small convs: plain fp32
                return self.patch_embed(images.float()).to(torch.bfloat16)
            conv = cast(nn.Conv2d, self.patch_embed)
            bias = None if conv.bias is None else bf16(conv.bias)
            return F.conv2d(bf16(images), bf16(conv.weight), bias, stride=self.patch_size).to(torch.bfloat16)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> patch features (B, N, embed_dim), N the number of patches.

        Raises:
            ValueError: with ``stem="conv"``, for image sides that are not multiples of ``patch_size``.
        """
        if isinstance(self.patch_embed, ConvStem) and (
            images.shape[-2] % self.patch_size or images.shape[-1] % self.patch_size
        ):
            # padded stride-2 convs round up where a patchify conv drops the remainder: the grid would
            # no longer be patch_grid()
            raise ValueError(
                f"stem='conv' needs image sides that are multiples of patch_size={self.patch_size}, "
                f"got {tuple(images.shape[-2:])}"
            )
        x = self._embed(images)
        rows, cols = x.shape[-2:]
        position = self._position(rows, cols)
        x = x.flatten(2).transpose(1, 2)
        if self.extra_tokens:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.drop(x + position)
        if self.config.pre_norm:
            x = self.norm_pre(x)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # recomputed in backward instead of keeping activations; non-reentrant, RNG (dropout) preserved
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        x = self.norm(x)
        return x + position if self.config.output_pos else x
