"""Fine-tuning controls applied to the model before the optimizer is built, and early stopping.

``prepare_model``: LoRA adapters (``lora_rank``), frozen parameters (``freeze``) and gradient checkpointing,
in that order, so that ``freeze`` can also pick adapters (``freeze=["encoder"]`` with LoRA: decoder adapters only).
Frozen parameters are left out of every optimizer group (``optim.finetune_param_groups``): no AdamW state,
no weight decay, bitwise unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from geometry_os.errors import ConfigError
from geometry_os.systems.pixel_llm.plugin_api import TrainerConfig, freeze, lora


def prepare_model(model: torch.nn.Module, config: TrainerConfig) -> None:
    """Apply ``lora_rank``/``lora_targets``, ``freeze`` and ``gradient_checkpointing`` to ``model`` in place.
    Raises ``ConfigError`` (a pattern that matches nothing, nothing left to train, a component without
    gradient checkpointing)."""
    if config.lora_rank and not lora.has_lora(model):
        lora.add_lora(model, config.lora_targets, config.lora_rank, config.lora_alpha)
    if config.freeze:
        freeze(model, config.freeze)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("trainer.freeze: every parameter is frozen; nothing would train")
    if config.gradient_checkpointing:
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise ConfigError(f"gradient_checkpointing: {type(model).__name__} has no gradient_checkpointing_enable()")
        enable()


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter elements; tied weights count once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


class EarlyStopping:
    """Counts validations without a new best metric; ``stop`` once ``patience`` of them ran in a row.
    ``patience`` None: never stops. The counter is part of the trainer state (resumable)."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.since_best = 0

    def update(self, improved: bool) -> bool:
        """Record one validation; True when training should stop."""
        self.since_best = 0 if improved else self.since_best + 1
        return self.stop

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def state(self) -> dict[str, Any]:
        return {"validations_since_best": self.since_best, "early_stopped": self.stop}
