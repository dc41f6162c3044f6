"""Plugin: the ``hf`` tokenizer, any HF ``tokenizers`` JSON with its own special ids (see ``tokenizer.py``).

Registering stays cheap: only pydantic and the hookspecs are imported here.
"""

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from geometry_os.systems.pixel_llm.plugin_api import hookimpl


class HFTokenizerOptions(BaseModel):
    """No training options: an ``hf`` tokenizer comes from a pretrained model's files (``geo-os pixel-llm import``)."""

    model_config = ConfigDict(extra="forbid")


@hookimpl
def register_tokenizers(register: Callable[..., Any]) -> None:
    """Register the ``hf`` tokenizer (:class:`~.tokenizer.HFTokenizer`, options :class:`HFTokenizerOptions`)."""
    register("hf", "geometry_os.plugins.hf_tokenizer.tokenizer:HFTokenizer", HFTokenizerOptions)
