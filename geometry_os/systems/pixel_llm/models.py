"""The model-side classes of the original description, resolved from the plugins that provide them.

Kept for the original description's API (``from geometry_os.systems.pixel_llm.models import SimpleVocabulary``
and the ``VisionEncoder`` / ``LanguageDecoder`` classes it documents); pinned by tests/test_seed_surfaces.py.
The project's own code builds components through ``resolution.get_component`` and the model from ``modeling.py``.

``VisionEncoder`` is the registry's default encoder, ``LanguageDecoder`` its default decoder and
``SimpleVocabulary`` its default tokenizer (``[systems.pixel_llm.defaults]``; the shipped registry names
the ``vit``, ``xattn`` and ``simple`` plugins' components). They are looked up through the host in use,
so the core never imports a plugin module, and a disabled plugin makes its name unavailable here.
"""

from __future__ import annotations

from typing import Any

from .modeling import PixelLLM, PixelLLMOutput, create_pixel_llm

_FROM_PLUGINS = {"VisionEncoder": "encoder", "LanguageDecoder": "decoder", "SimpleVocabulary": "tokenizer"}

__all__ = ["PixelLLM", "PixelLLMOutput", "create_pixel_llm", *_FROM_PLUGINS]


def __getattr__(name: str) -> Any:
    if name in _FROM_PLUGINS:
        from geometry_os.errors import ComponentError

        from .resolution import get_component

        try:
            return get_component(_FROM_PLUGINS[name]).load()
        except ComponentError as exc:
            raise ImportError(f"cannot import {name}: {exc}") from None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
