"""Image preprocessing presets of pretrained backbones -> ``PixelLLMConfig`` image fields.

HF ``preprocessor_config.json`` (``ViTImageProcessor``: resize to ``size`` {height, width}, bilinear;
``CLIPImageProcessor`` / SigLIP: ``size`` {shortest_edge} + ``crop_size``, bicubic) and timm's
``pretrained_cfg`` (``interpolation``, ``crop_pct``, ``mean``, ``std``). PIL resample codes:
2 = bilinear, 3 = bicubic.
"""

from __future__ import annotations

from typing import Any

from geometry_os.errors import CheckpointError

RESAMPLE = {2: "bilinear", 3: "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}


def _interpolation(value: Any, where: Any) -> str:
    if value not in RESAMPLE:
        raise CheckpointError(f"{where}: resample {value!r} is not supported (bilinear = 2, bicubic = 3)")
    return RESAMPLE[value]


def hf_preprocessing(cfg: dict[str, Any], where: Any) -> dict[str, Any]:
    """Image preprocessing fields (``image_mean``/``image_std``, rescale factor, size, interpolation) of the
    model config from a HF ``preprocessor_config.json`` ``cfg`` (``where`` names it in errors).

    Raises:
        CheckpointError: for a resampling filter the image pipeline does not offer.
    """
    out: dict[str, Any] = {"image_interpolation": _interpolation(cfg.get("resample", 2), where)}
    if cfg.get("do_normalize", True):
        out["image_mean"] = tuple(cfg.get("image_mean", (0.5, 0.5, 0.5)))
        out["image_std"] = tuple(cfg.get("image_std", (0.5, 0.5, 0.5)))
    else:
        out["image_mean"], out["image_std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if cfg.get("do_rescale", True):
        out["image_rescale_factor"] = float(cfg.get("rescale_factor", 1 / 255))
    size = cfg.get("size") or {}
    if isinstance(size, dict) and "shortest_edge" in size:
        crop = cfg.get("crop_size") or {}
        side = crop.get("height", size["shortest_edge"]) if isinstance(crop, dict) else crop
        if cfg.get("do_center_crop", True):
            out["image_resize"] = "shorter_crop"
            out["image_crop_pct"] = side / size["shortest_edge"]
    return out


def timm_preprocessing(cfg: dict[str, Any]) -> dict[str, Any]:
    """Image preprocessing fields of the model config from a timm ``pretrained_cfg`` (mean/std, interpolation,
    centre-crop resizing).

    Raises:
        CheckpointError: for a resampling filter the image pipeline does not offer.
    """
    out: dict[str, Any] = {"image_interpolation": _interpolation(cfg.get("interpolation", "bicubic"), "pretrained_cfg")}
    if "mean" in cfg and "std" in cfg:
        out["image_mean"], out["image_std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    crop_pct = cfg.get("crop_pct")
    if crop_pct is not None and cfg.get("crop_mode", "center") == "center":
        out["image_resize"], out["image_crop_pct"] = "shorter_crop", float(crop_pct)
    return out
