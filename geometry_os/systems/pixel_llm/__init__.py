"""Pixel LLM: image captioning from a ViT encoder and a cross-attention decoder, built from plugins.

Kept for the original description's API: the names its snippets and API reference import from this package
(``PixelLLM``, ``PixelLLMConfig``, ``PixelLLMTrainer``, ``create_pixel_llm``, ``generate_caption``, the model
classes) stay here, pinned by tests/test_seed_surfaces.py. Names are imported lazily so that
``import geometry_os.systems.pixel_llm`` (and ``geo-os --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PixelLLM": ".modeling",
    "create_pixel_llm": ".modeling",
    "PixelLLMConfig": ".config",
    "TrainerConfig": ".config",
    "DatasetConfig": ".config",
    "GenerationConfig": ".config",
    "PRESETS": ".config",
    "generate_caption": ".inference",
    "beam_search_decode": ".inference",
    "caption_images": ".pipeline",
    "ImageTextDataset": ".data",
    "create_dataloader": ".data",
    # the original description's model classes, provided by the vit / xattn / simple plugins
    "VisionEncoder": ".models",
    "LanguageDecoder": ".models",
    "SimpleVocabulary": ".models",
}

__all__ = sorted([*_LAZY, "PixelLLMTrainer"])


def __getattr__(name: str) -> Any:
    if name == "PixelLLMTrainer":  # the registry's default trainer plugin (``amp``)
        from .resolution import get_component

        return get_component("trainer").load()
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
