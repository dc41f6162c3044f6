"""The ``vit`` encoder plugin: options and registration only.

Registering must stay cheap, so this module imports no torch; the model lives in ``model.py`` and is
imported by the core only when an encoder is built (the factory is a lazy ``"module:attr"`` string).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from geometry_os.systems.pixel_llm.plugin_api import hookimpl, num_heads_for


class ViTOptions(BaseModel):
    """Vision Transformer encoder: images (B, in_channels, H, W) -> patch features (B, N, embed_dim).

    ``pos_embed``: ``"learned"`` (trained table, bicubically interpolated for other image sizes) or
    ``"sincos"`` (fixed 2-D sin-cos, MAE style, computed for any grid; learns spatial layouts faster).
    ``stem``: ``"patch"`` (one linear map of each patch, as in ViT) or ``"conv"`` (early convolutions,
    Xiao et al. 2021: log2(patch_size) stride-2 3x3 conv-BatchNorm-ReLU layers, widths 32, 64, ...
    up to embed_dim, then a 1x1 conv; same patch grid, a few % more FLOPs, far more sample-efficient
    on small objects, see docs/learning.md). ``"conv"`` needs a power-of-two ``patch_size``.
    ``output_pos``: also add the position table to the output features, so that the decoder's
    cross-attention sees where each patch is directly (as DETR adds positions to its keys), not only
    through what the encoder layers kept of it.

    Options that pretrained layouts need (the defaults are this encoder's own layout):
    ``class_token``: prepend a learned CLS token (HF/timm/torchvision ViT, CLIP); the position table
    then has 1 + N rows, the CLS row is never interpolated, and the CLS feature stays first in the
    output (the N patch features are always the last N rows, which is what ``explain`` draws).
    ``norm_eps``: every LayerNorm's epsilon (HF ViT 1e-12, timm/torchvision/SigLIP 1e-6, CLIP 1e-5).
    ``act``: the MLP activation, ``gelu`` (exact), ``gelu_tanh`` (SigLIP) or ``quick_gelu``
    (``x * sigmoid(1.702 x)``, CLIP). ``pre_norm``: a LayerNorm before the blocks (CLIP's
    ``pre_layrnorm``). ``final_norm``: the LayerNorm after the blocks (CLIP's token outputs have
    none). ``patch_bias``: a bias on the patchify convolution (CLIP has none).
    """

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(224, gt=0)
    patch_size: int = Field(16, gt=0)
    embed_dim: int = Field(768, gt=0)
    num_layers: int = Field(6, gt=0, le=256)  # bounded like PixelLLMConfig.vision_num_layers
    num_heads: int | None = Field(
        None, gt=0, description="None: default_num_heads(embed_dim), heads of ~64 channels that divide it (12 for 768)"
    )
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    in_channels: int = Field(3, gt=0)
    pos_embed: Literal["learned", "sincos"] = "learned"
    stem: Literal["patch", "conv"] = "patch"
    output_pos: bool = False
    class_token: bool = False
    norm_eps: float = Field(1e-5, gt=0, lt=1)
    act: Literal["gelu", "gelu_tanh", "quick_gelu"] = "gelu"
    pre_norm: bool = False
    final_norm: bool = True
    patch_bias: bool = True

    @model_validator(mode="after")
    def _check_shapes(self) -> ViTOptions:
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}")
        self.num_heads = num_heads_for(self.embed_dim, self.num_heads)  # None: ~64 channels a head
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by 4 for pos_embed='sincos'")
        if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
            raise ValueError(f"stem='conv' needs a power-of-two patch_size, got {self.patch_size}")
        if self.class_token and self.pos_embed == "sincos":
            raise ValueError("class_token=True needs pos_embed='learned' (a sin-cos table has no CLS row)")
        if not self.patch_bias and self.stem == "conv":
            raise ValueError("patch_bias=False applies to stem='patch' only")
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} gives an empty MLP for embed_dim={self.embed_dim}")
        return self


@hookimpl
def register_encoders(register: Callable[..., Any]) -> None:
    """Register the ``vit`` encoder (:class:`~.model.VisionEncoder`, options :class:`ViTOptions`)."""
    register("vit", "geometry_os.plugins.vit.model:VisionEncoder", ViTOptions)
