"""Factories of the registered datasets: ``factory(options, tokenizer=None) -> Dataset``.

``tokenizer`` is a runtime argument (``Component.build(options, tokenizer=...)``): pass the training
set's tokenizer to the validation set so that both use the same ids.
"""

from __future__ import annotations

from typing import Any

from geometry_os.plugins.datasets import CaptionsOptions, ShapesOptions
from geometry_os.systems.pixel_llm.plugin_api import dataset_config


def build_captions(options: CaptionsOptions, tokenizer: Any = None):
    """The ``captions`` dataset: an ``ImageTextDataset`` of ``options.data_path`` (any registered format)."""
    from geometry_os.systems.pixel_llm.plugin_api import ImageTextDataset

    return ImageTextDataset(
        options.data_path,
        tokenizer=tokenizer,
        config=dataset_config(options),
        image_root=options.image_root,
        split=options.split,
    )


def build_shapes(options: ShapesOptions, tokenizer: Any = None):
    """The ``shapes`` dataset: ``options.n`` in-memory synthetic scenes of ``options.split``."""
    from geometry_os.plugins.datasets.shapes_dataset import ShapesDataset

    return ShapesDataset(
        options.n,
        options.seed,
        options.image_size,
        options.split,
        tokenizer=tokenizer,
        shape_weights=options.shape_weights,
        mean=options.mean,
        std=options.std,
        hold_out=options.hold_out,
    )
