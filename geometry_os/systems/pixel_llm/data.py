"""The data API of the original description, kept as a re-export: ``from geometry_os.systems.pixel_llm.data
import ImageTextDataset, create_dataloader`` works as written there.

The code lives in modules of one job each, in the order a caption becomes part of a batch:

* ``records``: caption files -> ``CaptionRecord``s (JSON list, JSON Lines, COCO; ``Records`` for readers);
* ``formats``: ``[FORMAT:]PATH`` -> the registered ``DatasetReader`` that reads it (the extension point);
* ``images``: image files -> RGB pictures (``load_image``, ``to_rgb``, ``DataError``; no torch);
* ``transforms``: RGB pictures -> normalised tensors (``build_transform``);
* ``tokens``: captions -> token ids (``resolve_tokenizer``, ``truncate``, ``CaptionTokens``);
* ``dataset``: ``ImageTextDataset``, ``CaptionedImages``, ``group_references``, ``per_image``;
* ``collate``: samples -> padded batches (``CaptionCollator``, ``create_dataloader``);
* ``targets``: which positions are targets of the loss (``IGNORE_INDEX``, ``next_token_targets``).

New code imports from those modules.
"""

from __future__ import annotations

from geometry_os.systems.pixel_llm.collate import CaptionCollator, create_dataloader
from geometry_os.systems.pixel_llm.dataset import (
    CaptionedImages,
    ImageTextDataset,
    check_image_root,
    group_references,
    per_image,
    summarize_skipped,
)
from geometry_os.systems.pixel_llm.images import DataError, load_image, to_rgb
from geometry_os.systems.pixel_llm.records import CaptionRecord, read_caption_file
from geometry_os.systems.pixel_llm.targets import IGNORE_INDEX
from geometry_os.systems.pixel_llm.tokens import CaptionTokens, resolve_tokenizer, special_id, truncate
from geometry_os.systems.pixel_llm.transforms import Rescale, build_transform

__all__ = [
    "IGNORE_INDEX",
    "CaptionCollator",
    "CaptionRecord",
    "CaptionTokens",
    "CaptionedImages",
    "DataError",
    "ImageTextDataset",
    "Rescale",
    "build_transform",
    "check_image_root",
    "create_dataloader",
    "group_references",
    "load_image",
    "per_image",
    "read_caption_file",
    "resolve_tokenizer",
    "special_id",
    "summarize_skipped",
    "to_rgb",
    "truncate",
]
