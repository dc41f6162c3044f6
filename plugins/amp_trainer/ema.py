"""An exponential moving average of the weights (Polyak averaging), with the warm-up of TensorFlow's
``ExponentialMovingAverage(num_updates=...)``: the first update copies the weights, and each later one,
after ``n`` updates, uses the decay ``min(ema_decay, (1 + n) / (10 + n))``, so that the average of a short
run is not dominated by its first, barely trained weights. Built on
``torch.optim.swa_utils.AveragedModel``: a copy of the model (one more copy of the parameters in memory)
whose parameters are ``torch._foreach_lerp_``-ed towards the trained ones after every optimizer step;
buffers are copied, not averaged. With LoRA the adapter matrices are averaged one by one, so the merged
average is the product of averages, close to but not exactly the average of the merged weights.

The trainer validates, picks ``best`` with and saves (``model.safetensors``) the averaged weights; the
trained weights, which the optimizer keeps updating, go into ``optimizer.pt`` so that a resume continues
both exactly.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

WARMUP_OFFSET = 10  # decay (1 + n) / (10 + n): 0.18 after one update, 0.9 after 80, 0.99 after 890


def warmed_decay(decay: float, updates: int) -> float:
    """The decay of the update that follows ``updates`` earlier ones: ``decay`` capped by the warm-up ramp."""
    return min(decay, (1 + updates) / (WARMUP_OFFSET + updates))


def ema_model(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An ``AveragedModel`` of ``model`` (a deep copy, same device; the averaged weights are its ``module``)
    whose ``update_parameters(model)`` moves each floating-point parameter ``1 - warmed_decay(decay, n)`` of
    the way to ``model``'s, ``n`` being its ``n_averaged`` (saved in its state dict)."""

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], _: torch.Tensor) -> None:
        if not torch.is_floating_point(ema[0]):  # grouped by dtype: integer parameters are copied
            torch._foreach_copy_(ema, current)
            return
        # the update count as AveragedModel keeps it (a CPU tensor; the argument is its copy on the device)
        torch._foreach_lerp_(ema, current, 1.0 - warmed_decay(decay, int(averaged.n_averaged)))

    averaged = AveragedModel(model, multi_avg_fn=update, use_buffers=False)
    averaged.requires_grad_(False)
    return averaged
