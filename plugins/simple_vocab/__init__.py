"""Plugin: the ``simple`` word-level tokenizer (see ``vocab.py``).

Registering stays cheap: only pydantic and the hookspecs are imported here.
"""

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from geometry_os.systems.pixel_llm.plugin_api import hookimpl


class SimpleVocabularyOptions(BaseModel):
    """How the vocabulary is built from training captions."""

    model_config = ConfigDict(extra="forbid")

    min_freq: int = Field(1, ge=1, description="drop words seen fewer times (they become <unk>)")
    max_size: int | None = Field(None, ge=4, description="at most this many tokens, specials included")


@hookimpl
def register_tokenizers(register: Callable[..., Any]) -> None:
    """Register the ``simple`` tokenizer (:class:`~.vocab.SimpleVocabulary`, options :class:`SimpleVocabularyOptions`)."""
    register("simple", "geometry_os.plugins.simple_vocab.vocab:SimpleVocabulary", SimpleVocabularyOptions)
