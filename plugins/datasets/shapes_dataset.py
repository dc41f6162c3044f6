"""In-memory synthetic scenes (``shapes.py``), pre-rendered once into a uint8 tensor for fast training.

Items are exactly those of ``ImageTextDataset`` on the PNGs written by ``make-shapes`` for the same
seed: same pixels, same normalisation (``mean``/``std``, the ``DatasetConfig`` defaults unless given), same keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from geometry_os.plugins.datasets.shapes import VOCABULARY, caption, make_split, parse_pairs, render_scene
from geometry_os.systems.pixel_llm.plugin_api import (
    EOS_ID,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CaptionedImages,
    CaptionRecord,
    CaptionTokens,
    DatasetConfig,
    resolve_tokenizer,
    special_id,
)


def default_tokenizer() -> Any:
    """The ``simple`` vocabulary of the grammar's words: the same ids for every split and seed."""
    from geometry_os.systems.pixel_llm.plugin_api import get_component

    tokenizer_class: Any = get_component("tokenizer", "simple").load()
    return tokenizer_class.train([" ".join(VOCABULARY)], None)


class ShapesDataset(CaptionedImages):
    """``n`` distinct scenes of ``split`` for ``seed``; ``image_path`` is ``shapes://<split>/<index>``.

    ``tokenizer``: as for ``ImageTextDataset``; None uses the grammar's vocabulary (``default_tokenizer``).
    ``shape_weights``: relative frequencies of 1/2/3-shape scenes (None: uniform), see ``make_split``.
    ``hold_out``: 'COLOUR KIND' pairs absent from train/val/test (split ``compositional``: present).
    Memory: n x 3 x image_size^2 bytes (30 000 scenes at 64 px: 369 MB).
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        image_size: int = 64,
        split: str = "train",
        tokenizer: Any = None,
        max_length: int = DatasetConfig().max_length,
        shape_weights: Sequence[float] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hold_out: Sequence[str] = (),
    ):
        self.config = DatasetConfig(image_size=image_size, max_length=max_length, mean=tuple(mean), std=tuple(std))
        self.seed, self.split = seed, split
        pairs = parse_pairs(",".join(hold_out)) if hold_out else frozenset()
        self.scenes = make_split(n, seed, split, shape_weights=shape_weights, hold_out=pairs)
        self.records = [
            CaptionRecord(f"shapes://{split}/{i:06d}", caption(scene), f"scene {i}", i)
            for i, scene in enumerate(self.scenes)
        ]
        self.skipped: list[tuple[int | str, str]] = []
        if tokenizer is None:
            tokenizer = default_tokenizer()
        self.tokenizer, encode = resolve_tokenizer(tokenizer, self.captions)
        self.tokens = CaptionTokens(
            encode, self.captions, self.config.max_length, special_id(self.tokenizer, "eos_token_id", EOS_ID)
        )
        step = image_size * image_size * 3
        pixels = bytearray(n * step)  # allocated once: growing it would copy hundreds of MB
        for i, scene in enumerate(self.scenes):
            pixels[i * step : (i + 1) * step] = render_scene(scene, image_size).tobytes()
        hwc = torch.frombuffer(pixels, dtype=torch.uint8).view(n, image_size, image_size, 3)
        self.images = hwc.permute(0, 3, 1, 2).contiguous()  # uint8 (n, 3, S, S)
        self._scale = (1 / (255 * torch.tensor(self.config.std))).view(3, 1, 1)
        self._shift = (torch.tensor(self.config.mean) / torch.tensor(self.config.std)).view(3, 1, 1)

    def exact_match_by_shapes(self, predictions: Sequence[str]) -> dict[int, tuple[float, int]]:
        """{number of shapes: (exact match in [0, 1], scenes)} of one predicted caption per scene, in order."""
        from geometry_os.plugins.datasets.shapes import exact_match_by_shapes

        return exact_match_by_shapes(predictions, self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scenes")
        record = self.records[index]
        return {
            "image": self.images[index].float() * self._scale - self._shift,
            "input_ids": self.tokens[index],
            "caption": record.caption,
            "image_path": record.image,
            "index": index,
        }
