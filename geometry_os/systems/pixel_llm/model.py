"""PixelLLM: an image encoder and a text decoder, both components resolved through the plugin registry.

The core never imports a plugin module: ``config.encoder`` / ``config.decoder`` name components and
the running host builds them with their validated options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from geometry_os.errors import ComponentError

from .components import get_component
from .config import PixelLLMConfig, preset_config
from .targets import IGNORE_INDEX, next_token_targets


@dataclass
class PixelLLMOutput:
    """``logits`` (B, T, vocab); with labels, ``loss`` (the mean next-token cross-entropy, or its sum over
    target tokens with ``reduction="sum"``) and ``n_tokens`` (0-dim long tensor: the target tokens)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    n_tokens: torch.Tensor | None = None


class PixelLLM(nn.Module):
    """Image-to-text model: ``encoder(images) -> features``, ``decoder(ids, features) -> logits``."""

    def __init__(self, config: PixelLLMConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if config is None:
            config = PixelLLMConfig(**fields)
        elif fields:
            config = config.model_copy(update=fields)
            config = PixelLLMConfig.model_validate(config.model_dump())
        self.config = config
        self.encoder = _build_module("encoder", config.encoder, config.encoder_config())
        self.decoder = _build_module("decoder", config.decoder, config.decoder_config())

    @property
    def device(self) -> torch.device:
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
    ) -> PixelLLMOutput:
        """Logits (B, T, vocab) for every position; with ``labels`` (B, T, aligned with ``input_ids``;
        padding and -100 ignored) also the next-token cross-entropy: its mean over the target tokens
        (``reduction="mean"``, NaN when there are none) or its sum (``"sum"``, for a trainer that
        normalises over several batches), and ``n_tokens``. See ``loss``."""
        features = self.encode(images)
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
        from geometry_os.errors import ConfigError

        for kind, module in (("encoder", self.encoder), ("decoder", self.decoder)):
            if not hasattr(module, "gradient_checkpointing"):
                raise ConfigError(
                    f"gradient_checkpointing: the {kind} component {getattr(self.config, kind)!r} "
                    "does not support it (no gradient_checkpointing attribute)"
                )
            module.gradient_checkpointing = enable

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- checkpoints (safetensors + JSON; nothing executes code on load)
    def save_pretrained(self, path: str | Path, tokenizer: Any = None) -> Path:
        from .checkpoint import save_pretrained

        return save_pretrained(self, path, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> tuple[PixelLLM, Any]:
        """``(model, tokenizer)`` from a folder written by ``save_pretrained`` or the trainer, or from a training
        run's folder (``checkpoint_dir``): its ``best`` checkpoint, else its ``latest``, logged as a note."""
        from .checkpoint import load_pretrained

        return load_pretrained(path, map_location=map_location)


def _build_module(kind: str, name: str, options: Any) -> nn.Module:
    """Build a component that becomes a submodule; a plugin returning anything else is named at once."""
    component = get_component(kind, name)
    module = component.build(options)
    if not isinstance(module, nn.Module):
        raise ComponentError(f"{component.label} factory returned {type(module).__name__}, expected a torch.nn.Module")
    return module


def create_pixel_llm(vocab_size: int | None = None, preset: str = "small", **overrides: Any) -> PixelLLM:
    """A PixelLLM from a named preset (``tiny``, ``small``, ``base``) with field overrides."""
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    return PixelLLM(preset_config(preset, **overrides))
