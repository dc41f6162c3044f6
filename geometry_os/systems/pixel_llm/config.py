"""Pydantic configs, validated before anything is built. Unknown fields are errors (``extra="forbid"``).

``PixelLLMConfig`` describes a model and names its encoder and decoder components (None: the registry's
defaults); the shared sizes below are offered to those components, each taking the fields its own options
model declares. Configs are plain data: ``resolution.resolve_model`` checks the names and options
against a component registry, and building a config looks nothing up. It
also holds a ``trainer`` section: trainer fields may be given flat (``PixelLLMConfig(learning_rate=1e-4)``),
as the original description does, and are moved into ``trainer``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PositiveFloat, ValidationError, field_validator, model_validator

from geometry_os.errors import ConfigError, format_validation_error
from geometry_os.fileio import parse_json

from .data_config import IMAGENET_MEAN, IMAGENET_STD, DatasetConfig
from .generation_config import GenerationConfig
from .strict import StrictModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class TrainerConfig(StrictModel):
    """How to train. Step-based intervals count optimizer steps."""

    learning_rate: float = Field(1e-4, gt=0, description="peak AdamW learning rate")
    num_epochs: int = Field(10, ge=1, description="passes over the training data")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    max_time_s: float | None = Field(None, gt=0, description="stop after this much training time (seconds)")
    batch_size: int = Field(32, ge=1, description="used when the trainer builds its own data loader (CLI)")
    num_workers: int = Field(0, ge=0, description="data-loader worker processes")
    use_amp: bool = Field(True, description="mixed precision (see amp_dtype)")
    amp_dtype: Literal["auto", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on CUDA when supported else fp16 + GradScaler; on CPU bf16 only where native"
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping (None: off)")
    ema_decay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="exponential moving average of the weights (Polyak averaging; 0: off), e.g. 0.999: validation, "
        "`best` and every saved model.safetensors use the average, the optimizer keeps training the weights "
        "(saved in optimizer.pt for resume); a warm-up caps the decay at (1 + n) / (10 + n) after n steps",
    )
    warmup_steps: int = Field(100, ge=0, description="linear warm-up steps")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warm-up")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final LR as a fraction of the peak")
    lr_decay_over: Literal["steps", "time"] = Field(
        "steps",
        description="decay the LR over the planned steps, or over max_time_s of training time (a time-budgeted run; "
        "resume continues the schedule from the saved training time but is not bit-exact)",
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (weight matrices only)")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    adam_beta2: float = Field(0.98, ge=0, lt=1, description="AdamW beta2")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    image_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of training captions decoded from the null image (all-zero features) instead of "
        "their own, so the decoder also learns the caption prior that guidance_scale contrasts with",
    )
    word_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of the decoder's input words (after <bos>) replaced by <pad>; the targets are "
        "unchanged, so the next word must come more from the image than from the words before it",
    )
    word_replacement: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of the decoder's input words (after <bos>) replaced by a uniformly random word "
        "of the vocabulary (SwitchOut); the targets are unchanged, so the image decides where they disagree",
    )
    val_interval: int | None = Field(
        500, ge=1, description="validate every N optimizer steps and at the end of training (None: after each epoch)"
    )
    val_max_samples: int = Field(500, ge=1, description="images captioned for validation metrics")
    best_metric: str | None = Field(
        None,
        description="validation metric that picks `best` (default: exact_match when captions are generated, else loss)",
    )
    checkpoint_interval: int | None = Field(
        500, ge=1, description="save every N optimizer steps and at the end of training (None: after each epoch)"
    )
    save_total_limit: int | None = Field(
        2, ge=1, description="keep this many step checkpoints, plus the best one (None: keep every one)"
    )
    checkpoint_dir: str = Field("./checkpoints", description="where step-N/, latest, best and metrics.jsonl go")
    seed: int = Field(42, description="model init, data order and sampling")
    log_interval: int = Field(10, ge=1, description="steps between metrics.jsonl records")
    compile: bool = Field(False, description="torch.compile the model (pays off on long GPU runs)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    synthetic_shape_weights: tuple[float, float, float] | None = Field(
        None,
        description="synthetic set only: relative frequencies of 1/2/3-shape training scenes (None: uniform); "
        "validation stays uniform",
    )
    synthetic_hold_out: list[str] | None = Field(
        None,
        description="synthetic set only: 'COLOUR KIND' pairs no training or validation scene contains "
        "(compositional generalisation; see make-shapes --hold-out)",
    )
    max_nonfinite_steps: int = Field(5, ge=1, description="consecutive non-finite losses before giving up")
    # fine-tuning controls (docs/training.md)
    freeze: list[str] = Field(
        default_factory=list,
        description="parameters that do not train: 'encoder', 'decoder' or name patterns ('*' any text, "
        "N-M a range of block numbers: 'encoder.blocks.0-7.*'); no optimizer state, bitwise unchanged",
    )
    encoder_learning_rate: float | None = Field(None, gt=0, description="peak LR of the encoder (None: learning_rate)")
    layer_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="layer-wise LR decay of the encoder (BEiT): block i of L gets layer_decay**(L-i) of the "
        "encoder LR, the patch/position embeddings layer_decay**(L+1); 1: off",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute encoder/decoder block activations in backward (less memory)"
    )
    lora_rank: int = Field(
        0, ge=0, description="LoRA adapter rank on lora_targets (0: off); all other weights are frozen"
    )
    lora_alpha: float = Field(
        16.0, gt=0, description="LoRA scaling numerator: the update is (lora_alpha / lora_rank) * B @ A"
    )
    lora_targets: list[str] = Field(
        default_factory=lambda: ["*.qkv", "*.proj", "*.q_x", "*.kv_x", "*.proj_x"],
        description="linear layers that get LoRA adapters (fnmatch patterns on module names)",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many validations without a new best metric (None: off)"
    )
    tensorboard: bool = Field(
        False, description="also write TensorBoard events to checkpoint_dir/tensorboard ('tensorboard' extra)"
    )
    # what `geo-os pixel-llm train` trains on (saved with the run, so `--resume` continues on the same data)
    data: str | None = Field(
        None,
        description="`train` command: training captions, [FORMAT:]PATH of a registered format (a split file: its train split); None: the synthetic shapes scenes",
    )
    val_data: str | None = Field(
        None,
        description="`train` command: validation captions, [FORMAT:]PATH (a split file: its val split; needs `data`)",
    )
    image_root: str | None = Field(
        None, description="`train` command: folder the image paths of `data` are relative to (None: its folder)"
    )
    val_image_root: str | None = Field(
        None, description="`train` command: the same for `val_data` (None: `image_root` when set, else its folder)"
    )
    tokenizer: str | None = Field(
        None,
        description="`train` command: tokenizer component trained on `data`'s captions (None: the registry's default)",
    )
    num_scenes: int = Field(
        10_000,
        ge=1,
        description="`train` command without `data`: synthetic training scenes (validation: a tenth, at most 1000)",
    )

    @field_validator("freeze")
    @classmethod
    def _check_freeze(cls, patterns: list[str]) -> list[str]:
        from .freeze import pattern_regex

        for pattern in patterns:
            pattern_regex(pattern)  # a ValueError naming the pattern
        return patterns

    @model_validator(mode="after")
    def _check_lora(self) -> TrainerConfig:
        if self.lora_rank and not self.lora_targets:
            raise ValueError("lora_rank > 0 needs at least one lora_targets pattern")
        return self


TRAINER_FIELDS = frozenset(TrainerConfig.model_fields)


def default_num_heads(dim: int) -> int:
    """Attention heads for a width when none are given: heads of about 64 channels (ViT/GPT-2: 768 ->
    12), taken as the largest divisor of ``dim`` not above ``dim // 64``, so it always divides
    (64 -> 1, 200 -> 2, 384 -> 6)."""
    limit = max(1, dim // 64)
    return next(h for h in range(limit, 0, -1) if dim % h == 0)


def num_heads_for(dim: int, heads: int | None, names: tuple[str, str] = ("embed_dim", "num_heads")) -> int:
    """The attention heads of a width: ``heads``, or ``default_num_heads(dim)`` when it is None.

    Raises ``ValueError`` naming both fields (``names``: the width's and the heads' field) when the heads
    do not divide ``dim``; inside a pydantic validator that becomes the ``ValidationError`` of the model.
    """
    heads = default_num_heads(dim) if heads is None else heads
    if dim % heads:
        raise ValueError(f"{names[0]}={dim} must be divisible by {names[1]}={heads}")
    return heads


# Layers per stack. Far above any captioner, and it bounds what a hostile config.json can make the loader
# build (even on the meta device every layer is Python objects: 10**7 layers would take hours and gigabytes).
MAX_LAYERS = 256

# Shared sizes offered to the encoder / decoder component: component field -> PixelLLMConfig field.
ENCODER_SHARED = {
    "image_size": "image_size",
    "patch_size": "patch_size",
    "embed_dim": "vision_embed_dim",
    "num_layers": "vision_num_layers",
    "num_heads": "vision_num_heads",
    "pos_embed": "vision_pos_embed",
    "mlp_ratio": "mlp_ratio",
    "dropout": "dropout",
}
DECODER_SHARED = {
    "vocab_size": "vocab_size",
    "embed_dim": "text_embed_dim",
    "num_layers": "text_num_layers",
    "num_heads": "text_num_heads",
    "max_seq_len": "max_seq_len",
    "cross_attention_dim": "cross_attention_dim",
    "num_cross_attention_layers": "num_cross_attention_layers",
    "mlp_ratio": "mlp_ratio",
    "dropout": "dropout",
    "tie_word_embeddings": "tie_word_embeddings",
    "pad_token_id": "pad_token_id",
}


class PixelLLMConfig(StrictModel):
    """A Pixel LLM model (and, in ``trainer``, how to train it)."""

    image_size: int = Field(224, gt=0, description="input images are resized to image_size x image_size")
    patch_size: int = Field(16, gt=0, description="ViT patch side in pixels; must divide image_size")
    image_mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="normalisation the model expects")
    image_std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(
        IMAGENET_STD, description="normalisation the model expects"
    )
    image_interpolation: Literal["bilinear", "bicubic"] = Field(
        "bilinear", description="resize filter the model expects"
    )
    image_resize: Literal["squash", "shorter_crop"] = Field(
        "squash", description="squash to image_size x image_size, or shorter side + centre crop (timm, CLIP)"
    )
    image_crop_pct: float = Field(1.0, gt=0, le=1, description="image_resize=shorter_crop: fraction kept by the crop")
    image_rescale_factor: PositiveFloat = Field(1 / 255, description="8-bit pixel values times this, before mean/std")
    vision_embed_dim: int = Field(768, gt=0, description="encoder width")
    vision_num_layers: int = Field(6, gt=0, le=MAX_LAYERS, description="encoder transformer blocks")
    vision_num_heads: int | None = Field(
        None, gt=0, description="None: default_num_heads(vision_embed_dim), heads of ~64 channels that divide it"
    )
    vision_pos_embed: Literal["learned", "sincos"] = Field(
        "learned", description="patch position embeddings: learned (interpolated) or fixed 2-D sin-cos"
    )
    vocab_size: int = Field(
        50000, ge=5, description="token embedding rows (the tokenizer's size when trained by the CLI)"
    )
    text_embed_dim: int = Field(768, gt=0, description="decoder width")
    text_num_layers: int = Field(12, gt=0, le=MAX_LAYERS, description="decoder transformer blocks")
    text_num_heads: int | None = Field(
        None, gt=0, description="None: default_num_heads(text_embed_dim), heads of ~64 channels that divide it"
    )
    max_seq_len: int = Field(512, ge=2, description="longest caption in tokens, <bos> and <eos> included")
    cross_attention_dim: int | None = Field(None, gt=0, description="None: vision_embed_dim")
    num_cross_attention_layers: int | None = Field(None, gt=0, description="None: every decoder layer")
    mlp_ratio: float = Field(4.0, gt=0, description="FFN width / model width")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in attention and FFN outputs")
    tie_word_embeddings: bool = Field(True, description="LM head shares the token embedding")
    pad_token_id: int = Field(0, ge=0, description="<pad> id: the tokenizer's (0 for simple and bpe; may equal eos)")
    bos_token_id: int = Field(1, ge=0, description="<bos> id: the tokenizer's (1 for simple and bpe)")
    eos_token_id: int = Field(2, ge=0, description="<eos> id: the tokenizer's (2 for simple and bpe)")
    generation: dict[str, Any] = Field(
        default_factory=dict,
        description="this model's default GenerationConfig fields (an import takes them from generation_config.json); "
        "what a caller or flag sets overrides them",
    )
    encoder: str | None = Field(
        None,
        min_length=1,
        description="encoder component (geo-os pixel-llm components encoder; None: the registry's default, "
        "written out by name once the model is built)",
    )
    encoder_options: dict[str, Any] = Field(default_factory=dict, description="the encoder's own options")
    decoder: str | None = Field(None, min_length=1, description="decoder component (None: the registry's default)")
    decoder_options: dict[str, Any] = Field(default_factory=dict, description="the decoder's own options")
    trainer: TrainerConfig = Field(
        default_factory=lambda: TrainerConfig.model_validate({}), description="how to train (see below)"
    )

    @model_validator(mode="before")
    @classmethod
    def _lift_trainer_fields(cls, data: Any) -> Any:
        """Move flat trainer fields (``PixelLLMConfig(learning_rate=1e-4)``) into ``trainer``.

        Kept for the original description's API, whose training snippets build the trainer's config as
        ``PixelLLMConfig(learning_rate=..., num_epochs=..., use_amp=..., checkpoint_dir=...)``; pinned by
        tests/test_seed_surfaces.py. Fields given both flat and in ``trainer``: the flat value wins.
        """
        if isinstance(data, dict):
            flat = {k: data[k] for k in data if k in TRAINER_FIELDS and k not in cls.model_fields}
            trainer = data.get("trainer") or {}
            if isinstance(trainer, BaseModel):
                trainer = trainer.model_dump(exclude_unset=True)
            if flat and isinstance(trainer, dict):  # else the field's own validation names the bad "trainer"
                data = {k: v for k, v in data.items() if k not in flat}
                data["trainer"] = {**trainer, **flat}
        return data

    @model_validator(mode="after")
    def _check(self) -> PixelLLMConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide image_size={self.image_size}")
        for dim_field, heads_field in (("vision_embed_dim", "vision_num_heads"), ("text_embed_dim", "text_num_heads")):
            num_heads_for(getattr(self, dim_field), getattr(self, heads_field), (dim_field, heads_field))
        if self.num_cross_attention_layers and self.num_cross_attention_layers > self.text_num_layers:
            raise ValueError(
                f"num_cross_attention_layers={self.num_cross_attention_layers} exceeds "
                f"text_num_layers={self.text_num_layers}"
            )
        for token in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(self, token) >= self.vocab_size:
                raise ValueError(f"{token}={getattr(self, token)} must be below vocab_size={self.vocab_size}")
        if self.generation:
            try:
                GenerationConfig.model_validate(self.generation)
            except ValidationError as exc:
                raise ValueError(f"generation: {format_validation_error(exc, source='generation')}") from None
        return self

    def heads(self, field: str) -> int:
        """The attention head count of ``field`` (``vision_num_heads`` or ``text_num_heads``): the set value, else
        the default for that side's embedding width (``default_num_heads``)."""
        value = getattr(self, field)
        if value is not None:
            return value
        dim = self.vision_embed_dim if field.startswith("vision") else self.text_embed_dim
        return default_num_heads(dim)

    def shared_value(self, name: str) -> Any:
        """The value of field ``name`` as offered to a component (``ENCODER_SHARED`` / ``DECODER_SHARED``):
        head counts and the cross-attention width with their defaults worked out."""
        if name in ("vision_num_heads", "text_num_heads"):
            return self.heads(name)
        if name == "cross_attention_dim":
            return self.cross_attention_dim or self.vision_embed_dim
        return getattr(self, name)

    def image_options(self) -> dict[str, Any]:
        """Size and normalisation of the images this model expects: ``DatasetConfig`` / ``shapes`` options,
        the same for training, evaluation and captioning."""
        options = {"image_size": self.image_size, "mean": self.image_mean, "std": self.image_std}
        preset = {
            "interpolation": (self.image_interpolation, "bilinear"),
            "resize": (self.image_resize, "squash"),
            "crop_pct": (self.image_crop_pct, 1.0),
            "rescale_factor": (self.image_rescale_factor, 1 / 255),
        }
        # only what differs from the defaults: datasets that take size, mean and std alone keep working
        options.update({key: value for key, (value, default) in preset.items() if value != default})
        return options

    def model_dict(self) -> dict[str, Any]:
        """The model part (no trainer section), as written to a checkpoint's config.json."""
        return self.model_dump(mode="json", exclude={"trainer"})


# Sizes of the named presets; ``create_pixel_llm(preset=...)`` and ``--preset`` use them.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        image_size=32,
        patch_size=8,
        vision_embed_dim=32,
        vision_num_layers=2,
        vision_num_heads=2,
        text_embed_dim=32,
        text_num_layers=2,
        text_num_heads=2,
        max_seq_len=32,
        vocab_size=64,
    ),
    "small": dict(
        image_size=64,
        patch_size=8,
        vision_embed_dim=192,
        vision_num_layers=4,
        vision_num_heads=3,
        text_embed_dim=192,
        text_num_layers=4,
        text_num_heads=3,
        max_seq_len=64,
        vocab_size=1000,
        vision_pos_embed="sincos",
    ),
    "base": dict(
        image_size=224,
        patch_size=16,
        vision_embed_dim=768,
        vision_num_layers=6,
        vision_num_heads=12,
        text_embed_dim=768,
        text_num_layers=12,
        text_num_heads=12,
        max_seq_len=512,
        vocab_size=50000,
    ),
}


def preset_config(preset: str = "small", **overrides: Any) -> PixelLLMConfig:
    """The config of preset ``preset`` (``PRESETS``) with ``overrides`` (config fields) applied, validated once.
    Raises ``ConfigError`` for an unknown preset or values that do not validate."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **overrides}
    try:
        return PixelLLMConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=f"preset {preset!r}")) from None


# ---- files and overrides ----------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML or JSON file as a dict. Raises ``ConfigError`` naming the file (and line/column for JSON) when
    it is missing, unreadable, not UTF-8, not valid TOML/JSON or not a table at the top level."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        data = parse_json(text, path, ConfigError)
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/object, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str] | tuple[str, ...], flag: str = "--set") -> dict[str, Any]:
    """``["trainer.learning_rate=3e-4", "encoder=toy"]`` -> nested dict; values parsed as JSON when they can be.
    Raises ``ConfigError`` naming ``flag`` and the item for one that is not ``key=value``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected key=value")
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{flag} {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``, nested dicts merged key by key (``extra`` wins); neither is modified."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), preset: str | None = None
) -> PixelLLMConfig:
    """Preset values, then the file, then ``--set`` overrides; one validation at the end. Raises
    ``ConfigError`` for an unknown preset, an unreadable file, a malformed override or values that do not
    validate."""
    if preset and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    source = str(path) if path else "config"
    if path:
        data = read_config_file(path)
        data = {**data.pop("model", {}), **data} if isinstance(data.get("model"), dict) else data
        values = deep_merge(values, data)
    values = deep_merge(values, parse_overrides(overrides))
    try:
        return PixelLLMConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=source)) from None


__all__ = [
    "DatasetConfig",
    "GenerationConfig",
    "StrictModel",
    "PRESETS",
    "PixelLLMConfig",
    "TrainerConfig",
    "load_config",
    "parse_overrides",
    "preset_config",
    "read_config_file",
]
