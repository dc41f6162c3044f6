"""PixelLLM: an image encoder and a text decoder, both components resolved through the plugin registry.

The core never imports a plugin module: ``config.encoder`` / ``config.decoder`` name components (None:
the registry's defaults), ``resolution.resolve_model`` checks them against a registry (by default the
host in use) and the model builds them with their validated options. ``load_pretrained`` builds a
checkpoint's model once, on the meta device, and assigns the saved tensors to it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from geometry_os.components import ComponentRegistry
from geometry_os.errors import CheckpointError, ComponentError, ConfigError

from . import checkpoint, lora
from .config import PixelLLMConfig, preset_config
from .resolution import ResolvedModel, resolve_model
from .targets import IGNORE_INDEX, next_token_targets
from .vocabulary import tokenizer_misfit

logger = logging.getLogger(__name__)


@dataclass
class PixelLLMOutput:
    """``logits`` (B, T, vocab); with labels, ``loss`` (the mean next-token cross-entropy, or its sum over
    target tokens with ``reduction="sum"``) and ``n_tokens`` (0-dim long tensor: the target tokens)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    n_tokens: torch.Tensor | None = None


class PixelLLM(nn.Module):
    """Image-to-text model: ``encoder(images) -> features``, ``decoder(ids, features) -> logits``."""

    def __init__(
        self,
        config: PixelLLMConfig | ResolvedModel | None = None,
        *,
        components: ComponentRegistry | None = None,
        **fields: Any,
    ) -> None:
        """Build from ``config`` (or ``PixelLLMConfig(**fields)``; ``fields`` also override a given config),
        resolved against ``components`` (default: the host in use), or from an already ``ResolvedModel``.
        ``self.config`` names the components built. Raises ``ConfigError`` (an unknown component, invalid
        options) or ``ComponentError`` (a plugin's factory failed)."""
        super().__init__()
        if isinstance(config, ResolvedModel) and fields:
            config = config.config
        if config is None:
            config = PixelLLMConfig(**fields)
        elif fields and isinstance(config, PixelLLMConfig):
            config = config.model_copy(update=fields)
            config = PixelLLMConfig.model_validate(config.model_dump())
        resolved = config if isinstance(config, ResolvedModel) else resolve_model(config, components)
        self.config = resolved.config
        self.encoder = resolved.build("encoder")
        self.decoder = resolved.build("decoder")

    @property
    def device(self) -> torch.device:
        """The device the model's parameters are on (the first parameter's)."""
        return next(self.parameters()).device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image features (B, N, D) that the decoder cross-attends to."""
        return self.encoder(images)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        reduction: Literal["mean", "sum"] = "mean",
        image_dropout: float = 0.0,
        word_dropout: float = 0.0,
        word_replacement: float = 0.0,
    ) -> PixelLLMOutput:
        """Logits (B, T, vocab) for every position; with ``labels`` (B, T, aligned with ``input_ids``;
        padding and -100 ignored) also the next-token cross-entropy: its mean over the target tokens
        (``reduction="mean"``, NaN when there are none) or its sum (``"sum"``, for a trainer that
        normalises over several batches), and ``n_tokens``. See ``loss``.

        ``image_dropout`` (training mode only): the probability that a row's features are replaced by
        the null image (zeros), the unconditional branch of classifier-free guidance (Ho & Salimans,
        2022) that ``GenerationConfig.guidance_scale`` reads at decode time. ``word_dropout`` (training
        mode only): the probability that an input token after ``<bos>`` is replaced by ``<pad>`` (Bowman
        et al., "Generating Sentences from a Continuous Space", 2016); the targets stay the caption's own,
        so the next word must come more from the image than from the words before it.
        ``word_replacement`` (training mode only): the same with a uniformly random id below
        ``config.vocab_size`` instead of ``<pad>`` (SwitchOut, Wang et al., EMNLP 2018; drawing ``<pad>``,
        ``<bos>`` or ``<eos>`` leaves the word as it was, other ids, ``<unk>`` included, are taken): the
        words before the next one may disagree with the image, which then decides."""
        features = self.encode(images)
        if image_dropout > 0 and self.training:
            null = torch.rand(features.shape[0], 1, 1, device=features.device) < image_dropout
            features = features.masked_fill(null, 0.0)
        if word_dropout > 0 and self.training:
            drop = torch.rand(input_ids.shape, device=input_ids.device) < word_dropout
            drop[:, 0] = False  # <bos> stays: it starts every caption
            input_ids = input_ids.masked_fill(drop, self.config.pad_token_id)
        if word_replacement > 0 and self.training:
            swap = torch.rand(input_ids.shape, device=input_ids.device) < word_replacement
            swap[:, 0] = False
            c = self.config
            random = torch.randint(0, c.vocab_size, input_ids.shape, device=input_ids.device)
            special = (random == c.pad_token_id) | (random == c.bos_token_id) | (random == c.eos_token_id)
            input_ids = torch.where(swap & ~special, random, input_ids)
        logits = self.decoder(input_ids, features, attention_mask)
        if labels is None:
            return PixelLLMOutput(logits=logits)
        total, n_tokens = self.loss(logits, labels, attention_mask, label_smoothing)
        loss = total if reduction == "sum" else total / n_tokens
        return PixelLLMOutput(logits=logits, loss=loss, n_tokens=n_tokens)

    @staticmethod
    def loss(
        logits: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, n_tokens)``: the next-token cross-entropy summed over the target tokens (float32, 0-dim)
        and their number (long, 0-dim). Logits (B, T, vocab) at position t predict ``labels`` (B, T) at
        t+1; which positions are targets is ``targets.next_token_targets`` (padding and -100 are not).
        ``label_smoothing`` in [0, 1) as in ``F.cross_entropy``."""
        targets = next_token_targets(labels, attention_mask)
        total = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=label_smoothing,
            reduction="sum",
        )
        return total, (targets != IGNORE_INDEX).sum()

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        max_length: int = 100,
        temperature: float = 1.0,
        do_sample: bool = False,
        top_k: int | None = None,
        top_p: float | None = None,
        num_beams: int = 1,
        **kwargs: Any,
    ) -> Any:
        """Captions for ``images`` as token ids (B, T); see ``inference.generate_caption`` for every
        option (``return_dict_in_generate=True`` returns scores and, with a tokenizer, text)."""
        from .inference import GenerationConfig, generate_caption

        config = GenerationConfig(
            max_length=max_length,
            temperature=temperature,
            do_sample=do_sample,
            top_k=top_k,
            top_p=top_p,
            num_beams=num_beams,
            **{k: v for k, v in kwargs.items() if k in GenerationConfig.model_fields},
        )
        rest = {k: v for k, v in kwargs.items() if k not in GenerationConfig.model_fields}
        return generate_caption(self, images, config=config, **rest)

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        """Recompute each encoder and decoder block's activations in backward (``torch.utils.checkpoint``,
        non-reentrant) instead of keeping them: less memory, about one more forward of compute. The same
        gradients (dropout's RNG state is replayed). Raises ``ConfigError`` for a component without the
        ``gradient_checkpointing`` attribute."""
        for kind, module in (("encoder", self.encoder), ("decoder", self.decoder)):
            if not hasattr(module, "gradient_checkpointing"):
                raise ConfigError(
                    f"gradient_checkpointing: the {kind} component {getattr(self.config, kind)!r} "
                    "does not support it (no gradient_checkpointing attribute)"
                )
            module.gradient_checkpointing = enable

    def num_parameters(self) -> int:
        """The number of parameter elements (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    # -- checkpoints (safetensors + JSON; nothing executes code on load)
    def save_pretrained(self, path: str | Path, tokenizer: Any = None) -> Path:
        """Write a checkpoint folder (``model.safetensors``, ``config.json``, the tokenizer's file); see
        ``checkpoint.save_pretrained``."""
        return checkpoint.save_pretrained(self, path, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> tuple[PixelLLM, Any]:
        """``(model, tokenizer)`` from a folder written by ``save_pretrained`` or the trainer, or from a training
        run's folder (``checkpoint_dir``): its ``best`` checkpoint, else its ``latest``, logged as a note."""
        return load_pretrained(path, map_location=map_location)


def load_pretrained(
    path: str | Path, map_location: str | torch.device = "cpu", components: ComponentRegistry | None = None
) -> tuple[PixelLLM, Any]:
    """``(model, tokenizer)`` from a checkpoint folder, or from a training run's folder (its ``best``
    checkpoint, else its ``latest``: logged as a warning-level note); the model is in eval mode.

    The config is read and resolved once (against ``components``, default: the host in use), the model
    built once on the meta device (no memory, no random init), the safetensors header compared with it,
    and only then the saved tensors loaded and assigned (``load_state_dict(assign=True)``); tied weights
    are tied again and buffers the file does not hold (computed ones) are computed. Raises
    ``CheckpointError`` (one line naming the file at fault) for a missing, forged or mismatched folder.
    """
    folder, note = checkpoint.resolve_checkpoint_folder(path)
    if note:
        logger.warning(note)
    config, data = checkpoint.read_checkpoint_config(folder)
    config_path = folder / checkpoint.CONFIG
    weights = checkpoint.safe_file(folder, checkpoint.WEIGHTS)
    assert weights is not None  # required=True: a missing file raised
    try:
        resolved = resolve_model(config, components)
        with torch.device("meta"):
            model = PixelLLM(resolved)
    except (ConfigError, ComponentError) as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    aliases = checkpoint.alias_groups(model)
    expected = {name: t.shape for name, t in model.state_dict().items()}
    checkpoint.check_weights_header(weights, expected, aliases)  # before any memory is allocated
    tokenizer = checkpoint.load_tokenizer(folder, data.get("tokenizer"))
    misfit = tokenizer_misfit(tokenizer, config.vocab_size)
    if misfit:
        raise CheckpointError(f"{folder}: {misfit}")
    _assign_weights(model, weights, aliases, resolved)
    lora.merge_adapter_file(folder, model)  # a trainer checkpoint of a LoRA run: its adapters, merged
    model.to(map_location)
    model.eval()
    return model, tokenizer


def _assign_weights(model: nn.Module, weights: Path, aliases: list[list[str]], resolved: ResolvedModel | None) -> None:
    """Replace ``model``'s meta tensors by those of ``weights`` (converted to the model's dtypes), tie each
    group of ``aliases`` to one parameter again, and compute the buffers no file holds."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(f"{weights}: cannot load weights: {' '.join(str(exc).split())}") from None
    own = model.state_dict()
    for names in aliases:  # a tied tensor is saved under one of its names: every name gets it
        present = next((n for n in names if n in state), None)
        for name in names:
            if present is not None and name in own:
                state[name] = state[present].to(own[name].dtype)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: missing tensors {missing[:5]} / unexpected {unexpected[:5]}")
    parameters = dict(model.named_parameters(remove_duplicate=False))
    for names in aliases:  # assign gives each name its own Parameter: make the aliases one object again
        if names[0] not in parameters:  # tied buffers are not re-tied: no component has any
            continue
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, parameters[names[0]])
    _compute_buffers(model, resolved)


def _compute_buffers(model: nn.Module, resolved: ResolvedModel | None) -> None:
    """Buffers a checkpoint does not hold (``persistent=False``: computed from the config, like sin-cos
    positions) are still on the meta device after loading: build the component that owns them once more
    with its parameters on the meta device (no memory, the same config) and take its computed buffers."""
    pending = [name for name, b in model.named_buffers() if b.is_meta]
    if not pending:
        return
    if resolved is None:
        raise CheckpointError(f"buffers {pending[:5]} are not in the checkpoint and cannot be computed")
    for kind in sorted({name.partition(".")[0] for name in pending}):
        with _parameters_on_meta():
            fresh = resolved.build(kind)
        module = model.get_submodule(kind)
        for name in [n.partition(".")[2] for n in pending if n.startswith(f"{kind}.")]:
            owner, _, attr = name.rpartition(".")
            target = module.get_submodule(owner)
            persistent = attr not in target._non_persistent_buffers_set
            target.register_buffer(attr, fresh.get_buffer(name), persistent=persistent)


_PARAMETERS_ON_META: ContextVar[bool] = ContextVar("pixel_llm_parameters_on_meta", default=False)
_PATCH_LOCK = threading.Lock()
_patch_users = 0  # blocks (in any thread) inside _parameters_on_meta; the patch is on while > 0
_register_parameter = nn.Module.register_parameter  # what the patch wraps: the method as the first block found it


def _register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    """``nn.Module.register_parameter``, then the parameter moved to meta inside a ``_parameters_on_meta`` block."""
    _register_parameter(module, name, param)
    if _PARAMETERS_ON_META.get() and param is not None and not param.is_meta:
        module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside the block moves to the meta device (buffers stay where they are
    made): what ``accelerate.init_empty_weights(include_buffers=False)`` does. ``register_parameter`` is
    patched on the class while any thread is inside such a block (counted under a lock, so overlapping
    blocks neither unpatch each other nor leave the patch behind), and the move is gated on a context
    variable, so modules another thread builds meanwhile keep their parameters."""
    global _patch_users, _register_parameter
    token = _PARAMETERS_ON_META.set(True)
    with _PATCH_LOCK:
        if not _patch_users:  # another library's patch, if any, is kept and restored
            _register_parameter = nn.Module.register_parameter
        _patch_users += 1
        # patched on the class on purpose (torch offers no hook for it)
        nn.Module.register_parameter = _register_on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        with _PATCH_LOCK:
            _patch_users -= 1
            if not _patch_users:
                nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign]
        _PARAMETERS_ON_META.reset(token)


def create_pixel_llm(vocab_size: int | None = None, preset: str = "small", **overrides: Any) -> PixelLLM:
    """A PixelLLM from a named preset (``tiny``, ``small``, ``base``) with field overrides."""
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    return PixelLLM(preset_config(preset, **overrides))
