"""Components of the pixel_llm system, looked up through the running host (never by import)."""

from __future__ import annotations

from geometry_os.components import Component, ComponentRegistry

from .hookspecs import COMPONENT_KINDS

__all__ = ["COMPONENT_KINDS", "Component", "ComponentRegistry", "get_component"]


def get_component(kind: str, name: str | None = None) -> Component:
    """The component ``name`` (or the registry's default) of the running host's pixel_llm system."""
    from geometry_os.host import get_host

    return get_host().system("pixel_llm").components.get(kind, name)
