"""Plugin: the ``bpe`` tokenizer, byte-level BPE trained with HF ``tokenizers`` (see ``tokenizer.py``).

Registering stays cheap: only pydantic and the hookspecs are imported here.
"""

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from geometry_os.systems.pixel_llm.plugin_api import hookimpl


class BPEOptions(BaseModel):
    """Training options. Byte-level BPE always keeps its 256 byte tokens, so vocab_size is at least 260."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(1000, ge=260, description="target size, specials and the 256 bytes included")
    min_frequency: int = Field(2, ge=1, description="a pair must be seen this often to be merged")


@hookimpl
def register_tokenizers(register: Callable[..., Any]) -> None:
    """Register the ``bpe`` tokenizer (:class:`~.tokenizer.BPETokenizer`, options :class:`BPEOptions`)."""
    register("bpe", "geometry_os.plugins.bpe.tokenizer:BPETokenizer", BPEOptions)
