"""Component resolution for the pixel_llm system: configs name components, a registry says what they are.

Configs (``PixelLLMConfig``, ``GenerationConfig``) are plain validated data: building one looks nothing
up. ``resolve_model`` and ``resolve_strategy`` check the names they give (or the registry's defaults,
``[systems.pixel_llm.defaults]``) and each component's options against a given ``ComponentRegistry`` -
by default the one of the host in use (``geometry_os.host.get_host``: the host of a running
``Host.call``, else the process-wide one). The core never imports a plugin module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from geometry_os.components import Component, ComponentRegistry
from geometry_os.errors import ComponentError, ConfigError

from .config import DECODER_SHARED, ENCODER_SHARED, PixelLLMConfig
from .generation_config import GenerationConfig
from .hookspecs import COMPONENT_KINDS
from .protocols import Importer

__all__ = [
    "COMPONENT_KINDS",
    "Component",
    "ComponentRegistry",
    "ResolvedModel",
    "ResolvedStrategy",
    "current_components",
    "get_component",
    "pretrained_importer",
    "resolve_model",
    "resolve_strategy",
]

SYSTEM = "pixel_llm"


def current_components() -> ComponentRegistry:
    """The pixel_llm component registry of the host in use (creating the process-wide host on first use)."""
    from geometry_os.host import get_host  # the host module loads plugins; configs never need it

    return get_host().system(SYSTEM).components


def pretrained_importer() -> Importer | None:
    """The ``protocols.Importer`` a plugin of the host in use provides (hook ``pretrained_importer``), None
    when no loaded plugin provides one."""
    from geometry_os.host import get_host

    importer: Importer | None = get_host().system(SYSTEM).pm.hook.pretrained_importer()
    return importer


def get_component(kind: str, name: str | None = None, components: ComponentRegistry | None = None) -> Component:
    """Component ``name`` of ``kind`` (None: the registry's default) from ``components``, else from the
    host in use. Raises ``ComponentError`` naming the registered ones when there is no such component."""
    return (components or current_components()).get(kind, name)


@dataclass(frozen=True)
class ResolvedModel:
    """A model config checked against a registry: ``config`` names its components (defaults filled in),
    and each component comes with its validated options, ready to build without another look-up."""

    config: PixelLLMConfig
    encoder: Component
    encoder_options: BaseModel | None
    decoder: Component
    decoder_options: BaseModel | None

    def build(self, kind: str) -> Any:
        """Build the ``encoder`` or ``decoder`` (a ``torch.nn.Module``); ``ComponentError`` when the plugin's
        factory fails or returns anything else."""
        from torch import nn  # resolution itself needs no torch

        component: Component = getattr(self, kind)
        module = component.build(getattr(self, f"{kind}_options"))
        if not isinstance(module, nn.Module):
            raise ComponentError(
                f"{component.label} factory returned {type(module).__name__}, expected a torch.nn.Module"
            )
        return module


def resolve_model(
    config: PixelLLMConfig, components: ComponentRegistry | None = None, source: str | None = None
) -> ResolvedModel:
    """Check ``config``'s encoder and decoder against ``components`` (default: the host in use).

    An unset ``encoder`` / ``decoder`` is the registry's default. Each component gets the shared sizes its
    options model declares (``ENCODER_SHARED`` / ``DECODER_SHARED``) overlaid with ``encoder_options`` /
    ``decoder_options``. Raises ``ConfigError`` (one line, prefixed with ``source`` when given): an
    unknown component (``unknown encoder 'x'; registered encoders: ...``) or an invalid option
    (``encoder_options: encoder 'vit': field: message``).
    """
    registry = components or current_components()
    prefix = f"{source}: " if source else ""
    found: dict[str, Any] = {}
    for kind, shared in (("encoder", ENCODER_SHARED), ("decoder", DECODER_SHARED)):
        try:
            component = registry.get(kind, getattr(config, kind))
        except ComponentError as exc:
            raise ConfigError(f"{prefix}{exc}") from None
        declared = component.config_model.model_fields if component.config_model else {}
        values = {key: config.shared_value(src) for key, src in shared.items() if key in declared}
        values.update(getattr(config, f"{kind}_options"))
        try:
            found[f"{kind}_options"] = component.options(values)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{kind}_options: {exc}") from None
        found[kind] = component
    named = config
    if config.encoder != found["encoder"].name or config.decoder != found["decoder"].name:
        named = config.model_copy(update={"encoder": found["encoder"].name, "decoder": found["decoder"].name})
    return ResolvedModel(config=named, **found)


@dataclass(frozen=True)
class ResolvedStrategy:
    """The decoding strategy a ``GenerationConfig`` runs with, and its validated options."""

    component: Component
    options: BaseModel | None

    def build(self) -> Any:
        """The strategy object (with a ``decode`` method); ``ComponentError`` when the factory fails or
        returns something without ``decode``."""
        strategy = self.component.build(self.options)
        if not callable(getattr(strategy, "decode", None)):
            raise ComponentError(
                f"{self.component.label} factory returned {type(strategy).__name__}, "
                "expected an object with a decode() method"
            )
        return strategy


def resolve_strategy(generation: GenerationConfig, components: ComponentRegistry | None = None) -> ResolvedStrategy:
    """The ``decoding_strategy`` component ``generation`` asks for, with its ``strategy_options`` validated.

    ``strategy`` names a registered strategy; a name that is a generation mode (``GENERATION_MODES``)
    and no registered strategy's is served by the strategy that serves the mode. Without ``strategy``,
    the generation mode (``generation.generation_mode``) is served by the registry's default strategy
    when it serves that mode, else by the first registered strategy that does. Raises ``ComponentError``
    (unknown strategy, or none serves the mode) or ``ConfigError`` (options the strategy's model
    refuses, naming ``decoding_strategy 'NAME'``).
    """
    registry = components or current_components()
    kind = "decoding_strategy"
    name = generation.strategy
    if name is not None and (name in registry.names(kind) or name != generation.generation_mode):
        component = registry.get(kind, name)
    else:
        component = registry.serving(kind, generation.generation_mode)
    return ResolvedStrategy(component, component.options(generation.strategy_options))
