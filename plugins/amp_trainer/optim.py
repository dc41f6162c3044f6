"""Optimizer pieces: AdamW parameter groups, the learning-rate schedule, mixed-precision choice, device."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import nn

from geometry_os.errors import ConfigError
from geometry_os.systems.pixel_llm.plugin_api import TrainerConfig, native_bf16

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, getattr(nn, "RMSNorm", nn.LayerNorm))
_MATRICES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight matrices decay; biases, norms and embeddings (token, position) do not.

    Decaying an embedding shrinks rarely seen tokens towards zero and decaying a norm's gain fights its
    purpose, hence the usual split. Tied weights (an embedding reused as the output layer) count as
    embeddings.
    """
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _MATRICES) and name == "weight":
                matrix = True
            else:  # a raw parameter: a matrix unless it is a norm's, a bias or an embedding table
                matrix = (
                    param.ndim >= 2 and not isinstance(module, _NORMS) and "embed" not in name and "token" not in name
                )
            (decay if matrix and id(param) not in embeddings else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def encoder_layer_id(name: str, num_layers: int) -> int:
    """BEiT/timm layer id of an encoder parameter (name inside the encoder): embeddings 0, block i i+1, the
    rest (final norm) num_layers+1 (as timm's ``param_groups_layer_decay`` numbers ViT parameters)."""
    m = _BLOCK.search("." + name)
    if m:
        return int(m.group(1)) + 1
    return 0 if "embed" in name else num_layers + 1


def finetune_param_groups(model: nn.Module, config: TrainerConfig) -> list[dict]:
    """AdamW groups with their own learning rates: ``param_groups`` for everything outside the encoder at
    ``learning_rate``; encoder parameters at ``encoder_learning_rate`` (default ``learning_rate``) times
    ``layer_decay ** (L + 1 - layer_id)`` (layer-wise LR decay as in BEiT, Bao et al. 2021, and timm's
    fine-tuning: the top of the encoder learns fastest). Each group has ``lr`` and a ``name``
    (``decoder``/``encoder.layer<k>``, ``.decay``/``.no_decay``). Frozen parameters are in no group.
    Without an encoder LR or decay this is exactly ``param_groups`` (two groups at ``learning_rate``)."""
    groups = param_groups(model, config.weight_decay)
    lr = config.learning_rate
    if config.encoder_learning_rate is None and config.layer_decay == 1.0:
        for group, kind in zip(groups, ("decay", "no_decay")):
            group.update(lr=lr, name=f"all.{kind}")
        return groups
    decays = {id(p) for p in groups[0]["params"]}
    encoder = getattr(model, "encoder", None)
    encoder_params = dict(encoder.named_parameters()) if isinstance(encoder, nn.Module) else {}
    encoder_ids = {id(p) for p in encoder_params.values()}
    blocks = {int(m.group(1)) for n in encoder_params if (m := _BLOCK.search("." + n))}
    num_layers = max(blocks) + 1 if blocks else 0
    encoder_lr = config.encoder_learning_rate or lr
    rest = [
        {
            "params": [p for p in g["params"] if id(p) not in encoder_ids],
            "weight_decay": g["weight_decay"],
            "lr": lr,
            "name": f"decoder.{kind}",
        }
        for g, kind in zip(groups, ("decay", "no_decay"))
    ]
    by_layer: dict[tuple[int, bool], list] = {}
    for name, param in encoder_params.items():
        if param.requires_grad:
            by_layer.setdefault((encoder_layer_id(name, num_layers), id(param) in decays), []).append(param)
    layered = [
        {
            "params": params,
            "weight_decay": config.weight_decay if decay else 0.0,
            "lr": encoder_lr * config.layer_decay ** (num_layers + 1 - layer),
            "name": f"encoder.layer{layer}.{'decay' if decay else 'no_decay'}",
        }
        for (layer, decay), params in sorted(by_layer.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]
    return [g for g in rest + layered if g["params"]]


def lr_lambda(
    config: TrainerConfig, total_steps: int, elapsed_s: Callable[[], float] | None = None
) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``step`` optimizer steps: linear warm-up, then decay.

    Warm-up starts at 1/warmup (not 0) so the first step already learns; the decay reaches
    ``min_lr_ratio`` at ``total_steps``. With ``lr_decay_over="time"`` the decay's progress is the
    training time ``elapsed_s()`` over ``max_time_s`` instead (the multiplier is the smaller of the
    warm-up ramp and the decay), so a wall-clock budget ends at ``min_lr_ratio`` whatever the speed.
    """
    warmup, kind, floor = config.warmup_steps, config.lr_scheduler, config.min_lr_ratio
    decay_steps = max(1, total_steps - warmup)
    by_time = config.lr_decay_over == "time"
    if by_time and (config.max_time_s is None or elapsed_s is None):
        raise ConfigError("trainer.lr_decay_over='time' needs trainer.max_time_s (the budget to decay over)")

    def decay(progress: float) -> float:
        if kind == "constant":
            return 1.0
        progress = min(1.0, max(0.0, progress))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return floor + (1.0 - floor) * shape

    def factor(step: int) -> float:
        if by_time:
            ramp = (step + 1) / warmup if step < warmup else 1.0
            return min(ramp, decay(elapsed_s() / config.max_time_s))
        if step < warmup:
            return (step + 1) / warmup
        return decay((step - warmup) / decay_steps)

    return factor


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device='cuda' but CUDA is not available; use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16/AMX, ``cpu_bf16.native_bf16``); elsewhere bf16
    autocast is emulated and slower than fp32 (measured: 13x on an AVX2 machine, small preset, with the
    native kernels)."""
    return native_bf16()


def amp_dtype(config: TrainerConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. ``auto``: bf16 on GPUs that have it, else fp16; on a CPU bf16
    only where it is native (else fp32, since emulated bf16 is slower). An explicit dtype is always used."""
    if not config.use_amp:
        return None
    if config.amp_dtype == "bfloat16":
        return torch.bfloat16
    if config.amp_dtype == "float16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None
