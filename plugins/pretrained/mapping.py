"""State-dict mappings from pretrained layouts to the ``vit`` encoder and the ``xattn`` decoder.

Each ``*_encoder`` function takes a state dict (names as the reference library saves them) and its
config, and returns ``(vit options, tensors named as in VisionEncoder)``; ``gpt2_decoder`` does the
same for ``LanguageDecoder``. Mapping-only differences are handled here: separate q/k/v are fused (in
q, k, v order), missing biases become zeros, GPT-2 ``Conv1D`` weights (stored (in, out)) are
transposed, and a VisionEncoderDecoder ``enc_to_dec_proj`` is folded into every cross-attention K/V
projection (``W = C P``, ``b = C b_P + b_C``). A missing tensor or a wrong shape is a one-line
``CheckpointError`` naming the tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from geometry_os.errors import CheckpointError

Tensors = dict[str, torch.Tensor]

ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}


class Source:
    """A state dict that names what it lacks: ``src["a.b"]`` raises a CheckpointError naming the tensor."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str, prefix: str = ""):
        self.tensors, self.label, self.prefix = tensors, label, prefix
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return self.prefix + name in self.tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        key = self.prefix + name
        if key not in self.tensors:
            raise CheckpointError(f"{self.label}: missing tensor {key}")
        self.used.add(key)
        return self.tensors[key].float()

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor, or zeros of ``shape`` when the layout has none (e.g. a bias-free projection)."""
        return self[name] if name in self else torch.zeros(shape)

    def check(self, name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """``tensor`` (named ``name`` in the source) when its shape is ``shape``.

        Raises:
            CheckpointError: naming the tensor, its shape and the expected one.
        """
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.label}: tensor {self.prefix + name} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(shape)} from the config"
            )
        return tensor


def activation(name: Any, label: str) -> str:
    """The encoder/decoder ``activation`` option for a HF activation ``name`` (``label`` names the source).

    Raises:
        CheckpointError: for an activation the model does not implement.
    """
    if name not in ACTIVATIONS:
        raise CheckpointError(f"{label}: activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _blocks(out: Tensors, src: Source, n: int, dim: int, hidden: int, names: Callable[[int], dict[str, Any]]) -> None:
    """Fill ``blocks.i.*`` from per-layer name tables: each value a name, or a list of names to concatenate
    (q, k, v), or a (name, transpose) pair."""
    for i in range(n):
        table = names(i)
        for ours, theirs in table.items():
            if isinstance(theirs, list):
                tensor = torch.cat([src.get(t, (dim,) if t.endswith("bias") else (dim, dim)) for t in theirs])
            else:
                tensor = src[theirs]
            out[f"blocks.{i}.{ours}"] = tensor
    for i in range(n):  # shapes, after every name was found
        expect = {
            "norm1.weight": (dim,),
            "norm1.bias": (dim,),
            "qkv.weight": (3 * dim, dim),
            "qkv.bias": (3 * dim,),
            "proj.weight": (dim, dim),
            "proj.bias": (dim,),
            "norm2.weight": (dim,),
            "norm2.bias": (dim,),
            "fc1.weight": (hidden, dim),
            "fc1.bias": (hidden,),
            "fc2.weight": (dim, hidden),
            "fc2.bias": (dim,),
        }
        for ours, shape in expect.items():
            src.check(f"[blocks.{i}.{ours}]", out[f"blocks.{i}.{ours}"], shape)


def _vit_options(
    image_size: int, patch: int, dim: int, layers: int, heads: int, hidden: int, **extra: Any
) -> dict[str, Any]:
    return dict(
        image_size=image_size,
        patch_size=patch,
        embed_dim=dim,
        num_layers=layers,
        num_heads=heads,
        mlp_ratio=hidden / dim,
        **extra,
    )


def _hf_vit_options(src: Source, cfg: Mapping[str, Any], eps: float, act: str, **extra: Any) -> dict[str, Any]:
    """The vit encoder's options from a HF ViT-family vision config: sizes (224 px, patch 16 when absent),
    ``layer_norm_eps`` (default ``eps``) and ``hidden_act`` (default ``act``); ``extra`` options added."""
    return _vit_options(
        cfg.get("image_size", 224),
        cfg.get("patch_size", 16),
        cfg["hidden_size"],
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["intermediate_size"],
        norm_eps=cfg.get("layer_norm_eps", eps),
        act=activation(cfg.get("hidden_act", act), src.label),
        **extra,
    )


def hf_vit_encoder(src: Source, cfg: Mapping[str, Any]) -> tuple[dict[str, Any], Tensors]:
    """HF ``ViTModel`` (``embeddings.*``, ``encoder.layer.i.*``, ``layernorm``)."""
    dim, n, hidden = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    out: Tensors = {
        "cls_token": src["embeddings.cls_token"],
        "pos_embed": src["embeddings.position_embeddings"],
        "patch_embed.weight": src["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.bias": src["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": src["layernorm.weight"],
        "norm.bias": src["layernorm.bias"],
    }
    a = "encoder.layer.{}.attention."

    def names(i: int) -> dict[str, Any]:
        p = f"encoder.layer.{i}."
        return {
            "norm1.weight": p + "layernorm_before.weight",
            "norm1.bias": p + "layernorm_before.bias",
            "qkv.weight": [a.format(i) + f"attention.{x}.weight" for x in ("query", "key", "value")],
            "qkv.bias": [a.format(i) + f"attention.{x}.bias" for x in ("query", "key", "value")],
            "proj.weight": a.format(i) + "output.dense.weight",
            "proj.bias": a.format(i) + "output.dense.bias",
            "norm2.weight": p + "layernorm_after.weight",
            "norm2.bias": p + "layernorm_after.bias",
            "fc1.weight": p + "intermediate.dense.weight",
            "fc1.bias": p + "intermediate.dense.bias",
            "fc2.weight": p + "output.dense.weight",
            "fc2.bias": p + "output.dense.bias",
        }

    _blocks(out, src, n, dim, hidden, names)
    return _hf_vit_options(src, cfg, eps=1e-12, act="gelu", class_token=True), out


def clip_siglip_encoder(src: Source, cfg: Mapping[str, Any], clip: bool) -> tuple[dict[str, Any], Tensors]:
    """HF ``CLIPVisionModel`` / ``SiglipVisionModel`` (``vision_model.*``): token outputs
    (``last_hidden_state``), so CLIP's ``post_layernorm`` (pooled CLS only) is not part of the encoder."""
    dim, n, hidden = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    e = "embeddings."
    out: Tensors = {
        "patch_embed.weight": src[e + "patch_embedding.weight"],
        "pos_embed": src[e + "position_embedding.weight"][None],
    }
    if clip:
        out["cls_token"] = src[e + "class_embedding"].reshape(1, 1, dim)
        out["norm_pre.weight"], out["norm_pre.bias"] = src["pre_layrnorm.weight"], src["pre_layrnorm.bias"]
    else:
        out["patch_embed.bias"] = src[e + "patch_embedding.bias"]
        out["norm.weight"], out["norm.bias"] = src["post_layernorm.weight"], src["post_layernorm.bias"]

    def names(i: int) -> dict[str, Any]:
        p = f"encoder.layers.{i}."
        s = p + "self_attn."
        return {
            "norm1.weight": p + "layer_norm1.weight",
            "norm1.bias": p + "layer_norm1.bias",
            "qkv.weight": [s + f"{x}_proj.weight" for x in "qkv"],
            "qkv.bias": [s + f"{x}_proj.bias" for x in "qkv"],
            "proj.weight": s + "out_proj.weight",
            "proj.bias": s + "out_proj.bias",
            "norm2.weight": p + "layer_norm2.weight",
            "norm2.bias": p + "layer_norm2.bias",
            "fc1.weight": p + "mlp.fc1.weight",
            "fc1.bias": p + "mlp.fc1.bias",
            "fc2.weight": p + "mlp.fc2.weight",
            "fc2.bias": p + "mlp.fc2.bias",
        }

    _blocks(out, src, n, dim, hidden, names)
    options = _hf_vit_options(
        src,
        cfg,
        eps=1e-5 if clip else 1e-6,
        act="quick_gelu" if clip else "gelu_pytorch_tanh",
        class_token=clip,
        pre_norm=clip,
        final_norm=not clip,
        patch_bias=not clip,
    )
    return options, out


def timm_vit_encoder(src: Source, image_size: int | None = None) -> tuple[dict[str, Any], Tensors]:
    """timm ``vit_*`` (``VisionTransformer``: ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``); LayerNorm eps 1e-6."""
    weight = src["patch_embed.proj.weight"]
    dim, patch = weight.shape[0], weight.shape[-1]
    n = 1 + max(int(k[len(src.prefix) :].split(".")[1]) for k in src.tensors if k.startswith(src.prefix + "blocks."))
    hidden = src["blocks.0.mlp.fc1.weight"].shape[0]
    cls = "cls_token" in src
    pos = src["pos_embed"]
    side = round((pos.shape[1] - int(cls)) ** 0.5)
    out: Tensors = {
        "patch_embed.weight": weight,
        "patch_embed.bias": src["patch_embed.proj.bias"],
        "pos_embed": pos,
        "norm.weight": src["norm.weight"],
        "norm.bias": src["norm.bias"],
    }
    if cls:
        out["cls_token"] = src["cls_token"]

    def names(i: int) -> dict[str, Any]:
        p = f"blocks.{i}."
        return {
            f"{k}.{w}": p
            + {
                "norm1": "norm1",
                "qkv": "attn.qkv",
                "proj": "attn.proj",
                "norm2": "norm2",
                "fc1": "mlp.fc1",
                "fc2": "mlp.fc2",
            }[k]
            + f".{w}"
            for k in ("norm1", "qkv", "proj", "norm2", "fc1", "fc2")
            for w in ("weight", "bias")
        }

    _blocks(out, src, n, dim, hidden, names)
    heads = max(1, dim // 64)
    options = _vit_options(image_size or side * patch, patch, dim, n, heads, hidden, class_token=cls, norm_eps=1e-6)
    return options, out


def torchvision_vit_encoder(src: Source, num_heads: int | None = None) -> tuple[dict[str, Any], Tensors]:
    """torchvision ``VisionTransformer`` (``class_token``, ``conv_proj``, ``encoder.pos_embedding``,
    ``encoder.layers.encoder_layer_i.{ln_1,self_attention.in_proj_*,out_proj,ln_2,mlp.0,mlp.3}``, ``encoder.ln``)."""
    weight = src["conv_proj.weight"]
    dim, patch = weight.shape[0], weight.shape[-1]
    layers = {k for k in src.tensors if k.startswith(src.prefix + "encoder.layers.encoder_layer_")}
    n = 1 + max(int(k[len(src.prefix) :].split(".")[2].rsplit("_", 1)[1]) for k in layers)
    hidden = src["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0]
    pos = src["encoder.pos_embedding"]
    side = round((pos.shape[1] - 1) ** 0.5)
    out: Tensors = {
        "cls_token": src["class_token"],
        "pos_embed": pos,
        "patch_embed.weight": weight,
        "patch_embed.bias": src["conv_proj.bias"],
        "norm.weight": src["encoder.ln.weight"],
        "norm.bias": src["encoder.ln.bias"],
    }

    def names(i: int) -> dict[str, Any]:
        p = f"encoder.layers.encoder_layer_{i}."
        table = {
            "norm1": "ln_1",
            "qkv": "self_attention.in_proj",
            "proj": "self_attention.out_proj",
            "norm2": "ln_2",
            "fc1": "mlp.0",
            "fc2": "mlp.3",
        }
        return {
            f"{k}.{w}": p + v + ("_" if k == "qkv" else ".") + w for k, v in table.items() for w in ("weight", "bias")
        }

    _blocks(out, src, n, dim, hidden, names)
    options = _vit_options(
        side * patch, patch, dim, n, num_heads or max(1, dim // 64), hidden, class_token=True, norm_eps=1e-6
    )
    return options, out


def gpt2_decoder(
    src: Source, cfg: Mapping[str, Any], proj: tuple[torch.Tensor, torch.Tensor] | None = None, cross: bool = True
) -> tuple[dict[str, Any], Tensors]:
    """HF GPT-2 (``wte``, ``wpe``, ``h.i.*``, ``ln_f``; ``Conv1D`` weights transposed). ``proj``: the
    VisionEncoderDecoder ``enc_to_dec_proj`` (weight, bias), folded into each ``kv_x``. ``cross=False``:
    a plain GPT-2 without cross-attention tensors (they start fresh).

    Raises:
        CheckpointError: a config value the decoder does not implement, or a tensor missing or of the wrong shape.
    """
    for key, want in (
        ("layer_norm_epsilon", 1e-5),
        ("scale_attn_by_inverse_layer_idx", False),
        ("reorder_and_upcast_attn", False),
        ("scale_attn_weights", True),
    ):
        if cfg.get(key, want) != want:
            raise CheckpointError(
                f"{src.label}: GPT-2 {key}={cfg[key]!r} is not supported (the decoder needs {want!r})"
            )
    if activation(cfg.get("activation_function", "gelu_new"), src.label) != "gelu_tanh":
        raise CheckpointError(
            f"{src.label}: GPT-2 activation_function={cfg['activation_function']!r} is not "
            "supported (the decoder uses tanh-GELU, gelu_new)"
        )
    dim, n = cfg["n_embd"], cfg["n_layer"]
    hidden = cfg.get("n_inner") or 4 * dim
    out: Tensors = {
        "wte.weight": src["wte.weight"],
        "wpe.weight": src["wpe.weight"],
        "norm.weight": src["ln_f.weight"],
        "norm.bias": src["ln_f.bias"],
    }
    src.check("wte.weight", out["wte.weight"], (cfg["vocab_size"], dim))

    def conv1d(name: str, shape_in: int, shape_out: int) -> torch.Tensor:
        return src.check(name, src[name], (shape_in, shape_out)).t().contiguous()

    for i in range(n):
        p, q = f"h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[q + ours + ".weight"], out[q + ours + ".bias"] = src[p + theirs + ".weight"], src[p + theirs + ".bias"]
        for ours, theirs, d_in, d_out in (
            ("qkv", "attn.c_attn", dim, 3 * dim),
            ("proj", "attn.c_proj", dim, dim),
            ("fc1", "mlp.c_fc", dim, hidden),
            ("fc2", "mlp.c_proj", hidden, dim),
        ):
            out[q + ours + ".weight"], out[q + ours + ".bias"] = (
                conv1d(p + theirs + ".weight", d_in, d_out),
                src[p + theirs + ".bias"],
            )
        if not cross:
            continue
        out[q + "norm_x.weight"], out[q + "norm_x.bias"] = (
            src[p + "ln_cross_attn.weight"],
            src[p + "ln_cross_attn.bias"],
        )
        for ours, theirs, d_out in (("q_x", "crossattention.q_attn", dim), ("proj_x", "crossattention.c_proj", dim)):
            out[q + ours + ".weight"], out[q + ours + ".bias"] = (
                conv1d(p + theirs + ".weight", dim, d_out),
                src[p + theirs + ".bias"],
            )
        c_weight, c_bias = (
            conv1d(p + "crossattention.c_attn.weight", dim, 2 * dim),
            src[p + "crossattention.c_attn.bias"],
        )
        if proj is not None:  # K/V of projected features: C (P h + b_P) + b_C = (C P) h + (C b_P + b_C)
            w_p, b_p = proj
            c_weight, c_bias = c_weight.double() @ w_p.double(), c_weight.double() @ b_p.double() + c_bias.double()
        out[q + "kv_x.weight"], out[q + "kv_x.bias"] = c_weight.float(), c_bias.float()
    options = dict(
        vocab_size=cfg["vocab_size"],
        embed_dim=dim,
        num_layers=n,
        num_heads=cfg["n_head"],
        max_seq_len=cfg.get("n_positions", 1024),
        mlp_ratio=hidden / dim,
    )
    return options, out
