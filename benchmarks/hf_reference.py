"""The HuggingFace reference model for benchmarks: ``VisionEncoderDecoderModel`` (ViT + GPT-2 with
cross-attention, SDPA attention) at the sizes of a Pixel LLM preset, with random weights built from
configs (nothing is downloaded).

Differences that are inherent, not chosen: HF's ViT adds a [CLS] token (N = patches + 1) and
GPT-2's MLP uses tanh-GELU; sizes, depths, heads, vocabulary and positions match.
"""

from __future__ import annotations

from typing import Any


def build_hf_model(preset: dict[str, Any], attn_implementation: str = "sdpa") -> Any:
    """A randomly initialised ``VisionEncoderDecoderModel`` matching ``preset`` (a ``PRESETS`` entry
    or ``PixelLLMConfig`` dump), in eval mode, with generation ids <pad>=0 <bos>=1 <eos>=2."""
    from transformers import GPT2Config, GPT2LMHeadModel, VisionEncoderDecoderModel, ViTConfig, ViTModel

    vision_dim = preset["vision_embed_dim"]
    text_dim = preset["text_embed_dim"]
    mlp_ratio = preset.get("mlp_ratio", 4.0)
    vit = ViTConfig(
        image_size=preset["image_size"],
        patch_size=preset["patch_size"],
        hidden_size=vision_dim,
        num_hidden_layers=preset["vision_num_layers"],
        num_attention_heads=preset.get("vision_num_heads") or max(1, vision_dim // 64),
        intermediate_size=int(vision_dim * mlp_ratio),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    gpt2 = GPT2Config(
        vocab_size=preset["vocab_size"],
        n_positions=preset["max_seq_len"],
        n_embd=text_dim,
        n_layer=preset["text_num_layers"],
        n_head=preset.get("text_num_heads") or max(1, text_dim // 64),
        n_inner=int(text_dim * mlp_ratio),
        add_cross_attention=True,
        is_decoder=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    for config in (vit, gpt2):
        config._attn_implementation = attn_implementation
    encoder = ViTModel(vit, add_pooling_layer=False)
    decoder = GPT2LMHeadModel(gpt2)
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = 1
    model.config.pad_token_id = 0
    model.config.eos_token_id = 2
    gen = model.generation_config
    gen.decoder_start_token_id, gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = 1, 1, 2, 0
    return model.eval()
