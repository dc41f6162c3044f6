"""Decoded RGB images -> normalised tensors: ``build_transform`` of a ``DatasetConfig``.

One transform for training, validation, captioning, explain and serving, so an image becomes the same
tensor everywhere. Augmentation never flips: captions say "left of".
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2  # type: ignore[import-untyped]

from geometry_os.systems.pixel_llm.data_config import DatasetConfig


class Rescale:
    """Multiply by a constant (a class, not a lambda, so DataLoader workers can pickle the transform)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def build_transform(config: DatasetConfig) -> v2.Compose:
    """PIL RGB image -> float tensor (3, image_size, image_size), normalised with ``mean``/``std``.

    Resize (squash: no crop can drop an object at an edge) and normalise; ``augment`` adds a mild
    random resized crop and brightness/contrast/saturation jitter (no hue: captions name colours, no flip).
    """
    size = (config.image_size, config.image_size)
    mode = v2.InterpolationMode.BICUBIC if config.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
    colour: list[v2.Transform] = []
    geometry: list[v2.Transform]
    if config.augment:
        geometry = [
            v2.RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(0.95, 1.05), interpolation=mode, antialias=True)
        ]
        colour = [v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)]
    elif config.resize == "shorter_crop":  # timm's eval transform: floor(size / crop_pct), centre crop
        geometry = [
            v2.Resize(math.floor(config.image_size / config.crop_pct), interpolation=mode, antialias=True),
            v2.CenterCrop(size),
        ]
    else:
        geometry = [v2.Resize(size, interpolation=mode, antialias=True)]
    scale = [] if abs(config.rescale_factor * 255 - 1) < 1e-12 else [Rescale(config.rescale_factor * 255)]
    return v2.Compose(
        [
            *geometry,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            *scale,
            *colour,
            v2.Normalize(list(config.mean), list(config.std)),
        ]
    )
