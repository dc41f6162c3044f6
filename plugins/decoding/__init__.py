"""The built-in decoding strategies: ``greedy``, ``sample`` and ``beam`` (registration only, no torch).

A decoding strategy is built by ``factory(options)`` (``options`` an instance of its pydantic model)
and has one method::

    strategy.decode(model, features, config: GenerationConfig, generator=None) -> GenerationOutput

``model`` is a ``PixelLLM`` in eval mode under ``torch.inference_mode()``; ``features`` (B, N, D)
are the already encoded images; ``config`` is validated; ``generator`` seeds sampling. Strategies
drive ``model.decoder.init_cache`` / ``step`` (see ``protocols.Decoder``) and must encode nothing.
Each declares the HF generation modes it serves (``serves=``): a config without ``strategy`` runs
with the registry's default strategy when it serves the config's mode, else with the first strategy
that does. Third-party strategies register the same way under a new name, with their own options model
(``GenerationConfig(strategy=name, strategy_options={...})``, ``--strategy-option KEY=VALUE``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from geometry_os.systems.pixel_llm.plugin_api import hookimpl


class NoOptions(BaseModel):
    """The built-in strategies take every setting from the ``GenerationConfig`` of the call."""

    model_config = ConfigDict(extra="forbid")


@hookimpl
def register_decoding_strategies(register):
    register("greedy", "geometry_os.plugins.decoding.greedy:GreedyDecoding", NoOptions, serves=["greedy"])
    register("sample", "geometry_os.plugins.decoding.sample:SampleDecoding", NoOptions, serves=["sample"])
    register("beam", "geometry_os.plugins.decoding.beam:BeamSearchDecoding", NoOptions, serves=["beam"])
