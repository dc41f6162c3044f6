"""LoRA adapters (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on chosen projections.

A projection's weight W (out, in) becomes ``W + (alpha / rank) * B @ A`` with A (rank, in) and B (out, rank);
A starts as in ``peft`` (Kaiming-uniform, a=sqrt(5)) and B at zero, so a fresh adapter leaves the model unchanged.

Why not ``peft``: our blocks read ``module.weight`` directly (``F.linear(x, self.qkv.weight, ...)``, the
KV-cached ``step``), which bypasses the forward of a peft ``LoraLayer``. The adapter is therefore a
``torch.nn.utils.parametrize`` parametrization of ``weight``: every read of ``module.weight`` sees the
adapted weight, in training, generation and export alike.

Checkpoints: ``model.safetensors`` keeps plain names and the frozen base weights; ``adapter.safetensors``
holds only the adapter tensors (``<module>.lora_A`` / ``<module>.lora_B``) and ``adapter_config.json`` their
rank and alpha. ``load_pretrained`` merges an adapter found next to the weights, so such a folder loads as a
plain model; ``save_pretrained`` of an adapted model writes the merged weights (no adapter files).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from geometry_os.errors import CheckpointError, ConfigError
from geometry_os.fileio import read_json, safe_file, write_json_atomic

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "pixel-llm-lora"


class LoRA(nn.Module):
    """The parametrization: ``forward(W) = W + scaling * B @ A`` for a weight W (out_features, in_features)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """The update ``scaling * B @ A`` (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The adapted weight: ``weight + (alpha / rank) * B @ A``, cast to ``weight``'s dtype (same shape)."""
        return weight + self.delta().to(weight.dtype)


def lora_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Module name -> linear layer for every layer of ``model`` whose ``weight`` carries a LoRA parametrization."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and parametrize.is_parametrized(m, "weight") and isinstance(_first(m), LoRA)
    }


def _first(module: nn.Module) -> nn.Module:
    params: Any = module.parametrizations  # added by torch.nn.utils.parametrize, unknown to the type checker
    first: nn.Module = params.weight[0]
    return first


def adapter_of(module: nn.Module) -> LoRA:
    """The LoRA parametrization of a module from :func:`lora_modules`."""
    adapter = _first(module)
    assert isinstance(adapter, LoRA)  # lora_modules lists only the modules whose first parametrization is one
    return adapter


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` has LoRA adapters attached (any parametrized ``nn.Linear``)."""
    return bool(lora_modules(model))


def add_lora(model: nn.Module, targets: Iterable[str], rank: int, alpha: float) -> list[str]:
    """Attach adapters to every ``nn.Linear`` whose module name matches a pattern of ``targets``
    (``fnmatch``: ``*.qkv``, ``decoder.blocks.*.q_x``); freezes every other parameter. Returns the adapted
    module names. Raises ``ConfigError`` when a pattern matches no linear layer, or rank < 1."""
    if rank < 1:
        raise ConfigError(f"trainer.lora_rank={rank} must be at least 1")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen: dict[str, nn.Linear] = {}
    for pattern in targets:
        hits = {n: m for n, m in linears.items() if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            sample = ", ".join(sorted(linears)[:6])
            raise ConfigError(f"trainer.lora_targets: {pattern!r} matches no linear layer (some are: {sample}, ...)")
        chosen.update(hits)
    for p in model.parameters():
        p.requires_grad_(False)
    for module in chosen.values():
        weight = module.weight
        adapter = LoRA(weight.shape[0], weight.shape[1], rank, alpha).to(device=weight.device, dtype=weight.dtype)
        parametrize.register_parametrization(module, "weight", adapter)
    return sorted(chosen)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight, in place (``W <- W + scaling * B @ A``); the model is plain again."""
    for module in lora_modules(model).values():
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def _plain_name(key: str) -> str:
    return key.replace(".parametrizations.weight.original", ".weight")


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under plain names, with each adapted weight's base W (not the adapted one)."""
    return {_plain_name(k): v for k, v in model.state_dict().items() if ".parametrizations.weight.0." not in k}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under plain names, each adapted weight merged (what ``merge_lora`` would leave)."""
    state = base_state_dict(model)
    with torch.no_grad():
        for name, module in lora_modules(model).items():
            state[f"{name}.weight"] = module.weight.detach().clone()
    return state


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: ``<module>.lora_A`` and ``<module>.lora_B``."""
    state = {}
    for name, module in lora_modules(model).items():
        adapter = adapter_of(module)
        state[f"{name}.lora_A"], state[f"{name}.lora_B"] = adapter.lora_A.detach(), adapter.lora_B.detach()
    return state


def save_adapter(folder: Path, model: nn.Module) -> None:
    """``adapter.safetensors`` (adapter tensors only) and ``adapter_config.json`` into ``folder``."""
    from safetensors.torch import save_file

    modules = lora_modules(model)
    first = adapter_of(next(iter(modules.values())))
    save_file({k: v.contiguous() for k, v in adapter_state_dict(model).items()}, str(folder / ADAPTER_WEIGHTS))
    write_json_atomic(
        folder / ADAPTER_CONFIG,
        {"format": ADAPTER_FORMAT, "rank": first.rank, "alpha": first.alpha, "modules": sorted(modules)},
    )


def read_adapter(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """``(config, tensors)`` of the adapter in ``folder``, or None when it has none.

    Raises:
        CheckpointError: an adapter config of another format or with a bad rank/alpha/modules, an invalid
            safetensors file, or tensors that do not match the config's modules.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = safe_file(folder, ADAPTER_WEIGHTS, required=False)
    if weights is None:
        return None
    config_path = safe_file(folder, ADAPTER_CONFIG)
    assert config_path is not None  # a required file: safe_file raises when it is missing
    config = read_json(config_path)
    if not isinstance(config, dict) or config.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{config_path}: not a LoRA adapter config (expected format={ADAPTER_FORMAT!r})")
    rank, alpha, modules = config.get("rank"), config.get("alpha"), config.get("modules")
    if not (isinstance(rank, int) and rank >= 1 and isinstance(alpha, (int, float)) and isinstance(modules, list)):
        raise CheckpointError(f"{config_path}: needs rank (an integer >= 1), alpha (a number) and modules (a list)")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: invalid safetensors file: {' '.join(str(exc).split())}") from None
    expected = {f"{m}.lora_{x}" for m in modules for x in "AB"}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)[:3]
        raise CheckpointError(f"{weights}: tensors do not match {ADAPTER_CONFIG}'s modules: {', '.join(odd)}")
    return config, tensors


def _check_shapes(folder: Path, module: nn.Linear, name: str, a: torch.Tensor, b: torch.Tensor, rank: int) -> None:
    out_f, in_f = module.weight.shape
    if tuple(a.shape) != (rank, in_f) or tuple(b.shape) != (out_f, rank):
        raise CheckpointError(
            f"{folder / ADAPTER_WEIGHTS}: {name} adapter shapes {tuple(a.shape)}, {tuple(b.shape)} "
            f"do not fit the weight {tuple(module.weight.shape)} at rank {rank}"
        )


def merge_adapter_file(folder: Path, model: nn.Module) -> bool:
    """Merge the adapter saved in ``folder`` (if any) into a plain ``model``'s weights; True when merged.

    Raises:
        CheckpointError: as :func:`read_adapter`, or when an adapted module is not a linear layer of ``model``.
    """
    found = read_adapter(folder)
    if found is None:
        return False
    config, tensors = found
    modules = dict(model.named_modules())
    rank, scaling = config["rank"], config["alpha"] / config["rank"]
    with torch.no_grad():
        for name in config["modules"]:
            module = modules.get(name)
            if not isinstance(module, nn.Linear):
                raise CheckpointError(f"{folder / ADAPTER_CONFIG}: {name!r} is not a linear layer of this model")
            a, b = tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]
            _check_shapes(folder, module, name, a, b, rank)
            delta = (b.to(module.weight.device) @ a.to(module.weight.device)) * scaling
            module.weight.add_(delta.to(module.weight.dtype))
    return True


def load_adapter_into(folder: Path, model: nn.Module) -> None:
    """Copy the adapter tensors saved in ``folder`` into ``model``'s attached adapters (a trainer resume).

    Raises:
        CheckpointError: when ``folder`` holds no adapter, its modules differ from the attached ones, or as
            :func:`read_adapter`.
    """
    found = read_adapter(folder)
    modules = lora_modules(model)
    if found is None:
        raise CheckpointError(f"{folder}: missing {ADAPTER_WEIGHTS} (the run trains LoRA adapters)")
    config, tensors = found
    if sorted(config["modules"]) != sorted(modules):
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: adapted modules differ from this run's lora_targets")
    with torch.no_grad():
        for name, module in modules.items():
            adapter = adapter_of(module)
            a, b = tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]
            _check_shapes(folder, module, name, a, b, adapter.rank)
            adapter.lora_A.copy_(a)
            adapter.lora_B.copy_(b)
