"""Optimizer pieces: AdamW parameter groups, the learning-rate schedule, mixed-precision choice, device."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from geometry_os.errors import ConfigError
from geometry_os.systems.pixel_llm.config import TrainerConfig

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
                matrix = param.ndim >= 2 and not isinstance(module, _NORMS) and "embed" not in name and "token" not in name
            (decay if matrix and id(param) not in embeddings else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
    """Whether this CPU computes bf16 natively (AVX512-BF16/AMX); elsewhere bf16 autocast is emulated and
    runs an order of magnitude slower than fp32 (measured: 13x on an AVX2 machine, small preset)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


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
