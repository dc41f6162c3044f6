"""The model-side classes of the original description, resolved from the plugins that provide them.

Kept for the original description's API (``from geometry_os.systems.pixel_llm.models import SimpleVocabulary``
and the ``VisionEncoder`` / ``LanguageDecoder`` classes it documents); pinned by tests/test_seed_surfaces.py.
The project's own code builds components through ``components.get_component`` and the model from ``model.py``.

``VisionEncoder`` is the ``vit`` encoder, ``LanguageDecoder`` the ``xattn`` decoder and
``SimpleVocabulary`` the ``simple`` tokenizer. They are looked up through the running host, so the
core never imports a plugin module, and a disabled plugin makes its name unavailable here.
"""

from __future__ import annotations

from typing import Any

from .model import PixelLLM, PixelLLMOutput, create_pixel_llm

_FROM_PLUGINS = {
    "VisionEncoder": ("encoder", "vit"),
    "LanguageDecoder": ("decoder", "xattn"),
    "SimpleVocabulary": ("tokenizer", "simple"),
}

__all__ = ["PixelLLM", "PixelLLMOutput", "create_pixel_llm", *_FROM_PLUGINS]


def __getattr__(name: str) -> Any:
    if name in _FROM_PLUGINS:
        from geometry_os.errors import ComponentError

        from .components import get_component

        kind, component = _FROM_PLUGINS[name]
        try:
            return get_component(kind, component).load()
        except ComponentError as exc:
            raise ImportError(f"cannot import {name}: {exc}") from None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
