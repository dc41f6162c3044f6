"""The built-in decoding strategies: ``greedy``, ``sample`` and ``beam`` (registration only, no torch).

A decoding strategy is built by ``factory(options)`` (``options`` an instance of its pydantic model)
and has one method::

    strategy.decode(model, features, config: GenerationConfig, generator=None) -> GenerationOutput

``model`` is a ``PixelLLM`` in eval mode under ``torch.inference_mode()``; ``features`` (B, N, D)
are the already encoded images; ``config`` is validated; ``generator`` seeds sampling. Strategies
drive ``model.decoder.init_cache`` / ``step`` (see ``protocols.Decoder``) and must encode nothing.
Third-party strategies register the same way under a new name and are picked with
``GenerationConfig(strategy=name)``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from geometry_os.systems.pixel_llm.hookspecs import hookimpl


class NoOptions(BaseModel):
    """The built-in strategies take every setting from the ``GenerationConfig`` of the call."""

    model_config = ConfigDict(extra="forbid")


@hookimpl
def register_decoding_strategies(register):
    register("greedy", "geometry_os.plugins.decoding.greedy:GreedyDecoding", NoOptions)
    register("sample", "geometry_os.plugins.decoding.sample:SampleDecoding", NoOptions)
    register("beam", "geometry_os.plugins.decoding.beam:BeamSearchDecoding", NoOptions)
