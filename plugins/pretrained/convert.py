"""Convert pretrained files into a Pixel LLM checkpoint folder (``geo-os pixel-llm import``).

Sources (detected from ``config.json``'s ``model_type`` or, for a bare state dict, its tensor names):

* a HF ``VisionEncoderDecoderModel`` folder with a ViT encoder and a GPT-2 decoder (``vision-encoder-decoder``):
  weights, ``preprocessor_config.json``, ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``,
  ``generation_config.json`` -> a complete captioner;
* an encoder alone: a HF ``vit`` folder, a ``clip_vision_model`` / ``siglip_vision_model`` folder (or the
  vision tower of a ``clip`` / ``siglip`` folder), a timm ``vit_*`` or torchvision ``vit_b_16``-style state
  dict (``.safetensors``, or ``.bin`` / ``.pth`` read with ``weights_only``);
* a decoder alone: a HF ``gpt2`` folder; its cross-attention starts fresh (as HF initialises it).

With an encoder or decoder alone the other half is freshly initialised from ``preset`` and the fresh
tensors are listed in the checkpoint's ``config.json`` (``"import": {"fresh": [...]}``) so that
``train --init-from`` reports them. Nothing here imports ``transformers`` or ``timm``: files are read as
safetensors and JSON. Every problem is a one-line ``CheckpointError`` naming the file or tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from geometry_os.errors import CheckpointError
from geometry_os.fileio import parse_json, read_utf8, write_json_atomic

from . import mapping
from .mapping import Source
from .preprocessing import hf_preprocessing, timm_preprocessing

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ENCODER_TYPES = ("vit", "clip_vision_model", "siglip_vision_model", "clip", "siglip")
SUPPORTED = "vision-encoder-decoder (vit + gpt2), vit, clip(_vision_model), siglip(_vision_model), gpt2, timm vit_*, torchvision vit"


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (a config file of the source model).

    Raises:
        CheckpointError: when the file is not UTF-8, not JSON, or not an object.
    """
    data = parse_json(read_utf8(path, CheckpointError), path, CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a PyTorch pickle read with ``weights_only=True`` (no code runs).

    Raises:
        CheckpointError: an invalid safetensors file, a pickle that is not plain tensors, or a file that
            holds no state dict.
    """
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: invalid safetensors file: {' '.join(str(exc).split())}") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything that is not plain tensors
        raise CheckpointError(
            f"{path}: cannot read as a weights-only state dict: {' '.join(str(exc).split())[:200]}"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict") or data.get("model"), dict):
        data = data.get("state_dict") or data.get("model")
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return data


def _weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name, read_state_dict(folder / name)
    if (folder / "model.safetensors.index.json").exists():
        raise CheckpointError(f"{folder}: sharded weights are not supported; save the model in one file")
    raise CheckpointError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")


def _prefix(tensors: dict[str, torch.Tensor], suffix: str, label: str) -> str:
    """The name prefix in front of ``suffix`` (``vit.``, ``encoder.``, ...), from the first tensor ending in it."""
    for key in tensors:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    raise CheckpointError(f"{label}: missing tensor *{suffix}")


# ---- the parts ---------------------------------------------------------------------------------------------


def encoder_part(
    model_type: str, cfg: dict[str, Any], tensors: dict[str, torch.Tensor], label: str, prefix: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Source]:
    """The encoder of a HF ``model_type`` (``vit``, ``clip``, ``siglip`` or their vision towers) from its config
    ``cfg`` and ``tensors``: ``(encoder_options, tensors in the vit encoder's names, Source)``. ``prefix``: where
    the encoder's tensors start (found from a known tensor when None); ``label`` names the source in errors.

    Raises:
        CheckpointError: an unknown ``model_type``, or a tensor missing or of the wrong shape.
    """
    if model_type in ("clip", "siglip"):  # the vision tower of a dual encoder
        cfg, model_type = cfg.get("vision_config") or {}, f"{model_type}_vision_model"
    if model_type == "vit":
        src = Source(tensors, label, _prefix(tensors, "embeddings.cls_token", label) if prefix is None else prefix)
        options, out = mapping.hf_vit_encoder(src, cfg)
    elif model_type in ("clip_vision_model", "siglip_vision_model"):
        src = Source(tensors, label, _prefix(tensors, "embeddings.patch_embedding.weight", label))
        options, out = mapping.clip_siglip_encoder(src, cfg, clip=model_type.startswith("clip"))
    else:
        raise CheckpointError(f"{label}: unknown encoder model_type {model_type!r} (supported: {SUPPORTED})")
    return options, out, src


def _check_all_used(src: Source, ignore: tuple[str, ...] = ()) -> None:
    """A tensor of the source that no mapping used means a layout we do not understand: refuse it."""
    left = sorted(k for k in src.tensors if k not in src.used and not k.endswith(ignore))
    if left:
        raise CheckpointError(
            f"{src.label}: tensor {left[0]} has no counterpart in the model"
            + (f" (and {len(left) - 1} more)" if len(left) > 1 else "")
        )


# ---- the model -------------------------------------------------------------------------------------------


def _sizes(enc: dict[str, Any] | None, dec: dict[str, Any] | None, preset: str) -> dict[str, Any]:
    from geometry_os.systems.pixel_llm.plugin_api import PRESETS

    values = dict(PRESETS[preset])
    if enc:
        values.update(
            image_size=enc["image_size"],
            patch_size=enc["patch_size"],
            vision_embed_dim=enc["embed_dim"],
            vision_num_layers=enc["num_layers"],
            vision_num_heads=enc["num_heads"],
            vision_pos_embed="learned",
        )
    if dec:
        values.update(
            vocab_size=dec["vocab_size"],
            text_embed_dim=dec["embed_dim"],
            text_num_layers=dec["num_layers"],
            text_num_heads=dec["num_heads"],
            max_seq_len=dec["max_seq_len"],
            mlp_ratio=dec["mlp_ratio"],
        )
    else:
        values["mlp_ratio"] = 4.0
    return values


def build_checkpoint(
    dest: Path,
    fields: dict[str, Any],
    encoder: dict[str, torch.Tensor] | None,
    decoder: dict[str, torch.Tensor] | None,
    tokenizer: Any,
    source: Path,
) -> Path:
    """A PixelLLM with ``encoder`` / ``decoder`` tensors loaded (the missing half fresh), saved to ``dest``.

    Raises:
        CheckpointError: a converted tensor with no place in the model or of the wrong shape, or a ``dest``
            that holds other files (see :class:`~geometry_os.fileio.AtomicFolder`).
    """
    from geometry_os.fileio import AtomicFolder
    from geometry_os.systems.pixel_llm.plugin_api import (
        CONFIG,
        TOKENIZER,
        WEIGHTS,
        PixelLLM,
        PixelLLMConfig,
        write_model_files,
    )

    config = PixelLLMConfig.model_validate(fields)
    torch.manual_seed(0)
    model = PixelLLM(config)
    state = model.state_dict()
    given = {
        **{f"encoder.{k}": v for k, v in (encoder or {}).items()},
        **{f"decoder.{k}": v for k, v in (decoder or {}).items()},
    }
    for name, tensor in given.items():
        if name not in state:
            raise CheckpointError(f"{source}: converted tensor {name} has no place in the model (a mapping bug)")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the model needs {tuple(state[name].shape)}"
            )
    model.load_state_dict(given, strict=False)
    fresh = sorted(k for k in state if k not in given)
    with AtomicFolder(dest, replaces=(WEIGHTS, CONFIG, TOKENIZER)) as tmp:
        write_model_files(tmp, model, tokenizer)
        data = json.loads((tmp / CONFIG).read_text(encoding="utf-8"))
        data["import"] = {"source": str(source), "fresh": fresh}
        write_json_atomic(tmp / CONFIG, data)
    return dest


def _tokenizer(folder: Path, ids: dict[str, int | None]) -> Any:
    from geometry_os.systems.pixel_llm.plugin_api import get_component

    # the ``hf`` tokenizer component's factory is its class: looked up, so this plugin imports no other plugin
    tokenizer_class: Any = get_component("tokenizer", "hf").load()
    config = read_json_file(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    cleanup = bool(config.get("clean_up_tokenization_spaces", False))
    if (folder / "tokenizer.json").is_file():
        from geometry_os.systems.pixel_llm.plugin_api import parse_tokenizers_json

        backend = parse_tokenizers_json(
            read_utf8(folder / "tokenizer.json", CheckpointError), folder / "tokenizer.json"
        )
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        specials = [config.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
        specials = [t.get("content") if isinstance(t, dict) else t for t in specials]
        backend = tokenizer_class.gpt2_from_vocab_merges(
            folder / "vocab.json",
            folder / "merges.txt",
            ["<|endoftext|>", *(t for t in specials if isinstance(t, str))],
        )
    else:
        return None
    try:
        return tokenizer_class(
            backend,
            ids["bos_token_id"],
            ids["eos_token_id"],
            ids["pad_token_id"],
            ids.get("unk_token_id"),
            cleanup,
            source=folder,
        )
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


GENERATION_FIELDS = (
    "max_length",
    "max_new_tokens",
    "min_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "num_beams",
    "length_penalty",
    "early_stopping",
    "no_repeat_ngram_size",
    "repetition_penalty",
)


def generation_defaults(folder: Path) -> dict[str, Any]:
    """HF ``generation_config.json`` -> our GenerationConfig fields; HF's own default (20 new tokens)
    where the file is silent, so ``caption`` decodes as HF ``generate()`` would."""
    data = read_json_file(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    out: dict[str, Any] = {}
    if data.get("max_length") is None and data.get("max_new_tokens") is None:
        out["max_new_tokens"] = 20  # HF 5 generate(): 20 new tokens after the start token
    out.update({k: data[k] for k in GENERATION_FIELDS if data.get(k) is not None})
    if not out.get("do_sample"):
        for key in ("temperature", "top_k", "top_p"):  # HF ignores them without sampling
            out.pop(key, None)
    return out


def _special_ids(*configs: dict[str, Any]) -> dict[str, int | None]:
    """bos = decoder_start_token_id (else bos_token_id), eos, pad (else eos): the first config that sets each."""

    def first(*keys: str) -> Any:
        for cfg in configs:
            for key in keys:
                if isinstance(cfg.get(key), int):
                    return cfg[key]
        return None

    eos = first("eos_token_id")
    return {
        "bos_token_id": first("decoder_start_token_id", "bos_token_id"),
        "eos_token_id": eos,
        "pad_token_id": first("pad_token_id") if first("pad_token_id") is not None else eos,
    }


def import_pretrained(
    source: str | Path, dest: str | Path, preset: str = "small", image_size: int | None = None
) -> Path:
    """Convert ``source`` (a HF folder or a timm / torchvision state-dict file) into the checkpoint folder ``dest``.

    ``preset`` sizes the freshly initialised half when ``source`` is an encoder or a decoder alone;
    ``image_size`` is needed for a timm / torchvision file whose grid is not square. Returns ``dest``.
    Raises ``CheckpointError`` (one line naming the file, field or tensor) for anything it cannot convert.
    """
    source, dest = Path(source), Path(dest)
    if not source.exists():
        raise CheckpointError(f"{source}: no such file or folder")
    if source.is_file():
        return _import_state_dict_file(source, dest, preset, image_size)
    config_path = source / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{source}: no config.json (a HF model folder has one)")
    cfg = read_json_file(config_path)
    model_type = cfg.get("model_type")
    weights_path, tensors = _weights(source)
    label = str(weights_path)
    if model_type == "vision-encoder-decoder":
        return _import_ved(source, dest, cfg, tensors, label)
    if model_type in ENCODER_TYPES:
        options, enc, src = encoder_part(model_type, cfg, tensors, label)
        if model_type == "vit":  # the towers of clip / siglip folders carry a text model and heads beside
            _check_all_used(
                src,
                ignore=(
                    "pooler.dense.weight",
                    "pooler.dense.bias",
                    "position_ids",
                    "classifier.weight",
                    "classifier.bias",
                ),
            )
        fields = _sizes(options, None, preset)
        fields.update(_preprocessing_fields(source, None), encoder_options=_encoder_extra(options))
        return build_checkpoint(dest, fields, enc, None, None, source)
    if model_type == "gpt2":
        prefix = _prefix(tensors, "wte.weight", label)
        src = Source(tensors, label, prefix)
        options, dec = mapping.gpt2_decoder(src, cfg, cross="h.0.crossattention.c_attn.weight" in src)
        if "lm_head.weight" in tensors and not torch.equal(tensors["lm_head.weight"].float(), dec["wte.weight"]):
            raise CheckpointError(
                f"{label}: lm_head.weight differs from the token embedding (untied heads are not supported)"
            )
        # old GPT-2 files carry the causal-mask buffers attn.bias / attn.masked_bias: not weights
        _check_all_used(src, ignore=("lm_head.weight", ".attn.bias", ".attn.masked_bias"))
        fields = _sizes(None, options, preset)
        ids = _special_ids(
            read_json_file(source / "generation_config.json") if (source / "generation_config.json").is_file() else {},
            cfg,
        )
        fields.update({k: v for k, v in ids.items() if v is not None}, generation=generation_defaults(source))
        return build_checkpoint(dest, fields, None, dec, _tokenizer(source, ids), source)
    raise CheckpointError(f"{config_path}: unknown architecture model_type={model_type!r} (supported: {SUPPORTED})")


def _encoder_extra(options: dict[str, Any]) -> dict[str, Any]:
    """The encoder options that ``PixelLLMConfig``'s shared sizes do not already carry."""
    shared = {"image_size", "patch_size", "embed_dim", "num_layers", "num_heads"}
    return {k: v for k, v in options.items() if k not in shared}


def _preprocessing_fields(folder: Path | None, timm_config: dict[str, Any] | None) -> dict[str, Any]:
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        return hf_preprocessing(
            read_json_file(folder / "preprocessor_config.json"), folder / "preprocessor_config.json"
        )
    if timm_config is not None:
        return timm_preprocessing(timm_config)
    return {}


def _import_ved(folder: Path, dest: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor], label: str) -> Path:
    enc_cfg, dec_cfg = cfg.get("encoder") or {}, cfg.get("decoder") or {}
    if enc_cfg.get("model_type") not in ("vit",) or dec_cfg.get("model_type") != "gpt2":
        raise CheckpointError(
            f"{folder / 'config.json'}: VisionEncoderDecoder with encoder "
            f"{enc_cfg.get('model_type')!r} and decoder {dec_cfg.get('model_type')!r} is not supported "
            "(supported: vit + gpt2)"
        )
    enc_options, enc, enc_src = encoder_part("vit", enc_cfg, tensors, label, prefix="encoder.")
    proj = None
    if "enc_to_dec_proj.weight" in tensors:
        proj_src = Source(tensors, label)
        proj = (proj_src["enc_to_dec_proj.weight"], proj_src["enc_to_dec_proj.bias"])
        enc_src.used |= proj_src.used
    dec_src = Source(tensors, label, "decoder.transformer.")
    dec_options, dec = mapping.gpt2_decoder(dec_src, dec_cfg, proj)
    enc_src.used |= dec_src.used
    if "decoder.lm_head.weight" in tensors:
        if not torch.equal(tensors["decoder.lm_head.weight"].float(), dec["wte.weight"]):
            raise CheckpointError(
                f"{label}: decoder.lm_head.weight differs from the token embedding (untied heads are not supported)"
            )
        enc_src.used.add("decoder.lm_head.weight")
    _check_all_used(enc_src, ignore=("pooler.dense.weight", "pooler.dense.bias", "attn.bias", "attn.masked_bias"))
    fields = _sizes(enc_options, dec_options, "tiny")
    fields.update(
        cross_attention_dim=enc_options["embed_dim"], encoder_options=_encoder_extra(enc_options), dropout=0.0
    )
    ids = _special_ids(
        read_json_file(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {},
        cfg,
        dec_cfg,
    )
    if ids["bos_token_id"] is None or ids["eos_token_id"] is None:
        raise CheckpointError(f"{folder / 'config.json'}: no decoder_start_token_id / eos_token_id")
    fields.update({k: v for k, v in ids.items() if v is not None}, generation=generation_defaults(folder))
    fields.update(_preprocessing_fields(folder, None))
    tokenizer = _tokenizer(folder, ids)
    return build_checkpoint(dest, fields, enc, dec, tokenizer, folder)


def _import_state_dict_file(path: Path, dest: Path, preset: str, image_size: int | None) -> Path:
    tensors = read_state_dict(path)
    label = str(path)
    if any(k.endswith("blocks.0.attn.qkv.weight") for k in tensors):
        src = Source(tensors, label, _prefix(tensors, "blocks.0.attn.qkv.weight", label))
        options, enc = mapping.timm_vit_encoder(src, image_size)
        _check_all_used(src, ignore=("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"))
        timm_cfg = _sidecar(path)
    elif any(k.endswith("encoder.layers.encoder_layer_0.ln_1.weight") for k in tensors):
        src = Source(tensors, label, _prefix(tensors, "encoder.layers.encoder_layer_0.ln_1.weight", label))
        options, enc = mapping.torchvision_vit_encoder(src)
        _check_all_used(src, ignore=("heads.head.weight", "heads.head.bias"))
        timm_cfg = _sidecar(path)
    else:
        raise CheckpointError(
            f"{path}: unknown architecture (no timm blocks.0.attn.qkv or torchvision "
            f"encoder.layers.encoder_layer_0 tensors; supported: {SUPPORTED})"
        )
    fields = _sizes(options, None, preset)
    fields.update(_preprocessing_fields(None, timm_cfg), encoder_options=_encoder_extra(options))
    return build_checkpoint(dest, fields, enc, None, None, path)


def _sidecar(path: Path) -> dict[str, Any] | None:
    """timm's ``pretrained_cfg`` saved beside the weights (``config.json`` of a timm Hub folder), if any."""
    config = path.parent / "config.json"
    if not config.is_file():
        return None
    data = read_json_file(config)
    return data.get("pretrained_cfg") or data
