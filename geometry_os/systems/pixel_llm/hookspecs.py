"""The whole plugin contract of the pixel_llm system.

Each ``register_*`` hook receives a ``register(name, factory, config_model=None, *, override=False,
serves=())`` callback (``serves``: what the component may be picked for unnamed; a decoding strategy's
generation modes). ``factory`` is a callable or a lazy ``"module:attribute"`` string; it is called with one
argument, an instance of ``config_model`` (a pydantic model), when the component is built.
Registering must stay cheap: import torch inside the factory's module, not in the hookimpl's.
"""

import pluggy

hookspec = pluggy.HookspecMarker("pixel_llm")
hookimpl = pluggy.HookimplMarker("pixel_llm")

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
def register_encoders(register):
    """Image encoders: ``factory(cfg) -> nn.Module`` mapping images (B,3,H,W) to features (B,N,D)."""


@hookspec
def register_decoders(register):
    """Text decoders with cross-attention and a KV cache (see ``protocols.Decoder``)."""


@hookspec
def register_tokenizers(register):
    """Tokenizers: text <-> ids with ``<pad> <bos> <eos> <unk>`` (see ``protocols.Tokenizer``)."""


@hookspec
def register_datasets(register):
    """Datasets of image-caption pairs: ``factory(cfg) -> torch.utils.data.Dataset``. A caption-data format
    registers here too: its factory is a ``protocols.DatasetReader`` (see ``formats.py``)."""


@hookspec
def register_decoding_strategies(register):
    """Decoding strategies: ``factory(options) -> strategy`` with ``strategy.decode(model, features, config,
    generator=None)`` (see ``protocols.DecodingStrategy``); ``serves=[mode, ...]`` names the generation modes
    it implements; ``options`` come from ``GenerationConfig.strategy_options``."""


@hookspec
def register_trainers(register):
    """Trainers: ``factory(cfg) -> trainer class`` taking (model, config, train_dataloader, val_dataloader)."""


@hookspec
def register_commands(cli):
    """Add click commands to the ``geo-os pixel-llm`` group ``cli``."""
