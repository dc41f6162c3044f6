"""``train --init-from``: the core's partial initialisation (``init_source.py``) with the ``pretrained``
plugin's importer, so that a HF / timm / torchvision source is converted as ``geo-os pixel-llm import`` does."""

from __future__ import annotations

from pathlib import Path

from geometry_os.systems.pixel_llm.plugin_api import VOCAB_TENSORS, InitSource, apply_init, describe  # noqa: F401 - the partial initialisation is the core's
from geometry_os.systems.pixel_llm.plugin_api import read_init_source as read_core_init_source


def convert(source: Path, dest: Path) -> Path:
    """``source`` converted into the checkpoint folder ``dest`` (CheckpointError when it cannot be)."""
    from geometry_os.plugins.pretrained.convert import import_pretrained

    return import_pretrained(source, dest)


def read_init_source(path: str | Path) -> InitSource:
    """Read (converting first if needed) the checkpoint ``path``; one-line CheckpointError on any problem."""
    return read_core_init_source(path, convert)
