"""``train --init-from``: the core's partial initialisation (``init_source.py``) with the importer a plugin
provides (the ``pretrained_importer`` hook; the ``pretrained`` plugin's), so that a HF / timm / torchvision
source is converted as ``geo-os pixel-llm import`` does."""

from __future__ import annotations

from pathlib import Path

from geometry_os.errors import CheckpointError
from geometry_os.systems.pixel_llm.plugin_api import (  # noqa: F401 - the partial initialisation is the core's
    VOCAB_TENSORS,
    InitSource,
    apply_init,
    describe,
    pretrained_importer,
)
from geometry_os.systems.pixel_llm.plugin_api import read_init_source as read_core_init_source


def convert(source: Path, dest: Path) -> Path:
    """``source`` converted into the checkpoint folder ``dest`` by the importer of the host in use.

    Raises:
        CheckpointError: when no plugin provides an importer, or the importer cannot convert ``source``.
    """
    importer = pretrained_importer()
    if importer is None:
        raise CheckpointError(f"--init-from {source}: not a Pixel LLM checkpoint, and no plugin provides an importer")
    return importer(source, dest)


def read_init_source(path: str | Path) -> InitSource:
    """Read (converting first if needed) the checkpoint ``path``; one-line CheckpointError on any problem."""
    return read_core_init_source(path, convert)
