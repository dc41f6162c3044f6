"""Fitting a run to its model and length: the data's image size and normalisation, the warm-up, the
time estimate printed after the first steps.

A model trained on images of another size than its ``image_size`` is captioned later at ``image_size``
(the checkpoint's config says so): the trainer therefore adapts a dataset that left its image options
at their defaults, and refuses batches whose images have another size, naming both sizes.
"""

from __future__ import annotations

import math
from typing import Any

from geometry_os.errors import GeometryOSError

# DatasetConfig field -> PixelLLMConfig.image_options() key (the same names)
IMAGE_FIELDS = ("image_size", "mean", "std")
WARMUP_FRACTION = 10  # a warm-up that does not fit the run is scaled to 1/WARMUP_FRACTION of it


class ImageSizeError(GeometryOSError, ValueError):
    """The images do not have the size (or normalisation) the model was built for."""


def fit_dataset(loader: Any, model_config: Any, label: str) -> str | None:
    """Give the loader's dataset the model's image options where the dataset left them at their defaults
    (``ImageTextDataset(path)`` uses ``DatasetConfig()``: 224 px, ImageNet normalisation). Options the
    dataset set itself and that differ from the model's raise ``ImageSizeError``. Returns a notice of
    what was adapted, or None. Datasets without a ``DatasetConfig`` are checked batch by batch instead
    (``check_images``)."""
    dataset: Any = getattr(loader, "dataset", None)
    config = getattr(dataset, "config", None)
    if config is None or not all(hasattr(config, f) for f in IMAGE_FIELDS):
        return None
    wanted = model_config.image_options()
    differ = {f: wanted[f] for f in IMAGE_FIELDS if _differs(getattr(config, f), wanted[f])}
    if not differ:
        return None
    explicit = [f for f in differ if f in getattr(config, "model_fields_set", set(IMAGE_FIELDS))]
    adaptable = callable(getattr(dataset, "transform", None)) and hasattr(config, "model_copy")
    if explicit or not adaptable:
        field = (explicit or list(differ))[0]
        raise ImageSizeError(
            f"{label} data: its {field}={_show(getattr(config, field))} but the model was built for "
            f"{_model_name(field)}={_show(wanted[field])}; build the dataset with the model's image options, "
            "e.g. DatasetConfig(**model.config.image_options())"
        )
    from geometry_os.systems.pixel_llm.plugin_api import build_transform

    dataset.config = config.model_copy(update=differ)
    dataset.transform = build_transform(dataset.config)
    shown = ", ".join(f"{_model_name(f)}={_show(v)}" for f, v in differ.items())
    return f"{label} data: its DatasetConfig left {', '.join(differ)} at the default; using the model's {shown}"


def check_images(images: Any, image_size: int) -> None:
    """A batch of images (B, C, H, W) has the model's size, else ``ImageSizeError`` naming both."""
    height, width = images.shape[-2:]
    if height != image_size or width != image_size:
        raise ImageSizeError(
            f"a batch has {width}x{height}-pixel images but the model was built for image_size={image_size}; "
            "build the dataset with the model's image options, e.g. DatasetConfig(**model.config.image_options())"
        )


def fitted_warmup(warmup_steps: int, total_steps: int) -> tuple[int, str | None]:
    """The warm-up to use and, when it had to change, why. A warm-up as long as the run never reaches the
    peak learning rate (100 warm-up steps in a 20-step run train at most at a fifth of it): it is scaled to
    a tenth of the run."""
    scaled = max(1, total_steps // WARMUP_FRACTION)
    if warmup_steps < total_steps or scaled >= warmup_steps:  # it fits, or is already as short as it can be
        return warmup_steps, None
    return scaled, (
        f"trainer.warmup_steps={warmup_steps} is not shorter than the run ({_steps(total_steps)}); "
        f"warming up over {_steps(scaled)} instead (a tenth of the run)"
    )


def estimate_line(
    seconds_per_step: float,
    steps_per_epoch: int,
    remaining_steps: int | None,
    budget_left_s: float | None,
    images_per_s: float,
) -> str:
    """``expected: 4 min per epoch (120 steps); 38 min for the run (1200 steps) at 42 img/s``."""
    parts = [f"{_duration(seconds_per_step * steps_per_epoch)} per epoch ({_steps(steps_per_epoch)})"]
    run_s = None if remaining_steps is None else seconds_per_step * remaining_steps
    if budget_left_s is not None and (run_s is None or budget_left_s < run_s):
        parts.append(f"{_duration(budget_left_s)} left of the time budget (max_time_s)")
    elif remaining_steps is not None:
        run_s = seconds_per_step * remaining_steps
        parts.append(f"{_duration(run_s)} for the rest of the run ({_steps(remaining_steps)})")
    return f"expected training time: {'; '.join(parts)}, at {images_per_s:.1f} img/s (validation not included)"


def _steps(n: int) -> str:
    return f"{n} step{'s' * (n != 1)}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _differs(ours: Any, wanted: Any) -> bool:
    if isinstance(ours, (tuple, list)):
        return len(ours) != len(wanted) or any(abs(float(a) - float(b)) > 1e-9 for a, b in zip(ours, wanted))
    return ours != wanted


def _show(value: Any) -> str:
    return str(list(value)) if isinstance(value, (tuple, list)) else str(value)


def _model_name(field: str) -> str:
    return {"mean": "image_mean", "std": "image_std"}.get(field, field)
