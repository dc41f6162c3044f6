"""The whole plugin contract of the pixel_llm system: the hooks a plugin implements (``plugin_api.hookimpl``).

Each ``register_*`` hook receives a ``register(name, factory, config_model=None, *, override=False,
serves=())`` callback. ``factory`` is a callable or a lazy ``"module:attribute"`` string; it is called with one
argument, an instance of ``config_model`` (a pydantic model, usually a ``plugin_api.StrictModel``), when the
component is built, and with none when there is no ``config_model``. ``serves`` names what the component may
be picked for without being named (a decoding strategy's generation modes, ``protocols.SYNTHETIC_DATA`` for
a dataset, a file suffix for a caption-data format). What each kind's factory returns is a protocol of
``protocols.py``. Registering must stay cheap: import torch inside the factory's module, not in the
hookimpl's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from .protocols import Importer

hookspec = pluggy.HookspecMarker("pixel_llm")
hookimpl = pluggy.HookimplMarker("pixel_llm")

Register = Callable[..., None]  # the ``register`` callback the ``register_*`` hooks receive

# kind of component -> the hook that registers it
COMPONENT_KINDS = {
    "encoder": "register_encoders",
    "decoder": "register_decoders",
    "tokenizer": "register_tokenizers",
    "dataset": "register_datasets",
    "decoding_strategy": "register_decoding_strategies",
    "trainer": "register_trainers",
}


@hookspec
def register_encoders(register: Register) -> None:
    """Image encoders: ``factory(options)`` gives a ``protocols.Encoder`` (an ``nn.Module`` mapping images
    (B, 3, H, W) to features (B, N, D))."""


@hookspec
def register_decoders(register: Register) -> None:
    """Text decoders: ``factory(options)`` gives a ``protocols.Decoder`` (cross-attention to the features, a
    ``protocols.DecoderCache`` for generation)."""


@hookspec
def register_tokenizers(register: Register) -> None:
    """Tokenizers: the factory is the class itself, a ``protocols.Tokenizer`` with ``train`` / ``load``
    classmethods and its own special ids."""


@hookspec
def register_datasets(register: Register) -> None:
    """Data sets of image-caption pairs: ``factory(options)`` gives a ``torch.utils.data.Dataset`` of
    ``protocols.CaptionItem``. A caption-data format registers here too: its factory is a
    ``protocols.DatasetReader`` (see ``formats.py``)."""


@hookspec
def register_decoding_strategies(register: Register) -> None:
    """Decoding strategies: ``factory(options)`` gives a ``protocols.DecodingStrategy``; ``options`` is the
    strategy's own options model filled from ``GenerationConfig.strategy_options``; ``serves=[mode, ...]``
    names the generation modes it implements."""


@hookspec
def register_trainers(register: Register) -> None:
    """Trainers: the factory is the class itself, a ``protocols.Trainer`` (the loop the train workflow drives)."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the ``geo-os pixel-llm`` group ``cli``."""


@hookspec(firstresult=True)
def pretrained_importer() -> Importer | None:
    """The ``protocols.Importer`` that converts pretrained weights into a checkpoint folder (the first plugin
    that returns one provides it); ``train --init-from`` uses it for a source that is not a checkpoint."""
