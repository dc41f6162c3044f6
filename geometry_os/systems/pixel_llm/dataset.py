"""Caption data sets: ``ImageTextDataset`` (records of any registered format, images read on access),
``CaptionedImages`` (what every caption data set shares), the reference grouping of evaluation, and the
checks made when a data set is built (``check_image_root``, ``summarize_skipped``).

An item is ``{"image": (3, S, S) float tensor, "input_ids": LongTensor, "caption", "image_path", "index"}``
(see ``protocols.CaptionItem``). Every caption is one sample; ``references`` groups the captions of each
image for evaluation. Images are loaded by ``images.load_image`` (the one loader of training, captioning,
evaluation, explain and lint-data) and turned into tensors by ``transforms.build_transform``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from torch.utils.data import Dataset

from geometry_os.systems.pixel_llm.data_config import DatasetConfig
from geometry_os.systems.pixel_llm.images import DataError, load_image
from geometry_os.systems.pixel_llm.protocols import EOS_ID
from geometry_os.systems.pixel_llm.records import CaptionRecord, Read
from geometry_os.systems.pixel_llm.tokens import CaptionTokens, resolve_tokenizer, special_id
from geometry_os.systems.pixel_llm.transforms import build_transform

logger = logging.getLogger(__name__)


def check_image_root(data_path: str, image_root: str | os.PathLike | None, records: Sequence[CaptionRecord]) -> None:
    """Fail when the data set is built, not at the first batch, if the image paths cannot be right: the
    ``image_root`` folder does not exist, or not one of the file's images does (stops at the first
    that exists, so a good root costs one ``stat``). Single missing images are left to loading
    (``on_error``) and ``lint-data``. Raises ``DataError`` naming the path."""
    root = str(image_root) if image_root is not None else (os.path.dirname(data_path) or ".")
    if image_root is not None and not os.path.isdir(root):
        raise DataError(f"{data_path}: image_root {root}: no such folder")
    images: dict[str, CaptionRecord] = {}
    for record in records:
        images.setdefault(record.image, record)
    if any(os.path.exists(path) for path in images):
        return
    first = next(iter(images.values()))
    how = "image_root" if image_root is not None else "image_root (default: the caption file's folder)"
    others = f", nor do the other {len(images) - 1} images" if len(images) > 1 else ""
    raise DataError(
        f"{first.image}: no such file ({data_path} {first.where}){others}; relative image paths start from {how} {root}"
    )


def summarize_skipped(name: str, reasons: Sequence[str], total: int, what: str) -> str:
    """One line: how many were skipped and the most common reasons."""
    counts = Counter(reasons)
    common = "; ".join(f"{n}x {r}" for r, n in counts.most_common(3))
    more = f"; and {len(counts) - 3} other reasons" if len(counts) > 3 else ""
    return f"{name}: skipped {len(reasons)} of {total} {what}: {common}{more} (see dataset.skipped)"


def group_references(samples: Iterable[tuple[Any, str]]) -> list[tuple[Any, list[str]]]:
    """(image, all its captions) per image from (image, caption) samples in file order: the references
    every evaluation scores an image's one caption against (validation, ``eval``, ``pixel_llm.evaluate``,
    the demo). Images keep the order of their first sample, captions their file order, duplicates included
    (as COCO keeps them), wherever an image's captions are in the file (grouped or interleaved)."""
    groups: dict[Any, list[str]] = {}
    for image, caption in samples:
        groups.setdefault(image, []).append(caption)
    return list(groups.items())


def per_image(dataset: Any, predictions: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Predictions made per sample of ``dataset`` (in sample order) -> one prediction per image and that
    image's references (``dataset.references``), in the order ``metrics.caption_metrics`` takes them.
    Raises ``ValueError`` when there is not one prediction per sample."""
    if len(predictions) != len(dataset.records):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset.records)} samples")
    by_image = dict(zip((r.image for r in dataset.records), predictions))
    references = dataset.references
    return [by_image[image] for image, _ in references], [refs for _, refs in references]


class CaptionedImages(Dataset):
    """Shared behaviour of the caption datasets: item dict, ``captions``, ``references``, ``image_paths``."""

    records: list[CaptionRecord]
    tokens: CaptionTokens

    @property
    def captions(self) -> list[str]:
        """Every sample's caption, in sample order."""
        return [r.caption for r in self.records]

    @property
    def references(self) -> list[tuple[str, list[str]]]:
        """(image path, all its captions) per image, in order of first appearance: for evaluation."""
        return group_references((r.image, r.caption) for r in self.records)

    @property
    def image_paths(self) -> list[str]:
        """Every distinct image path, in order of first appearance."""
        return list(dict.fromkeys(r.image for r in self.records))

    @property
    def lengths(self) -> list[int]:
        """Token count of every sample (for length-bucketing samplers)."""
        return self.tokens.lengths.tolist()

    def __len__(self) -> int:
        return len(self.records)


class ImageTextDataset(CaptionedImages):
    """Samples of caption data ``[FORMAT:]PATH`` of any registered format; images are read lazily on access.

    ``tokenizer``: a tokenizer object (its ``encode`` is used; kept as ``self.tokenizer``), any callable
    text -> ids (``vocab.encode`` keeps ``vocab``), a tokenizer component's name, or None to train the
    registry's default tokenizer on this file's captions (then pass ``dataset.tokenizer`` to the validation
    set so ids agree). ``split``: a part of a split file (train/val/test). Raises ``DataError`` for a file
    with no usable entries or whose images cannot be where it says (see ``check_image_root``).
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        tokenizer: Any = None,
        config: DatasetConfig | dict | None = None,
        image_root: str | os.PathLike | None = None,
        split: str | None = None,
    ) -> None:
        from geometry_os.systems.pixel_llm.formats import read_caption_data

        self.config = config if isinstance(config, DatasetConfig) else DatasetConfig.model_validate(config or {})
        self.data_path = str(data_path)
        records, skipped, reasons = read_caption_data(data_path, image_root, self.config.on_error, split)
        if skipped:
            total = len({r.where for r in records}) + len(skipped)
            logger.warning(summarize_skipped(self.data_path, reasons, total, "entries"))
        if not records:
            raise DataError(f"{self.data_path}: no usable entries")
        check_image_root(self.data_path, image_root, records)
        self.records = records
        self.skipped: list[tuple[int | str, str]] = list(skipped)
        self.tokenizer, self._encode = resolve_tokenizer(tokenizer, self.captions)
        self._tokenize()
        self.transform = build_transform(self.config)
        self._bad: dict[str, str] = {}  # image path -> message, found on access when skipping

    def _tokenize(self) -> None:
        eos = special_id(self.tokenizer, "eos_token_id", EOS_ID)
        self.tokens = CaptionTokens(self._encode, self.captions, self.config.max_length, eos)

    def _label(self, record: CaptionRecord) -> str:
        return f"{record.image} ({self.data_path} {record.where})"

    def _load(self, record: CaptionRecord) -> Image.Image:
        return load_image(record.image, self.config.max_image_pixels, self._label(record), self.config.image_size)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index`` (``DataError`` when unreadable)."""
        return self._load(self.records[index])

    def _item(self, index: int, image: Image.Image) -> dict[str, Any]:
        record = self.records[index]
        return {
            "image": self.transform(image),
            "input_ids": self.tokens[index],
            "caption": record.caption,
            "image_path": record.image,
            "index": index,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        if self.config.on_error == "raise":
            return self._item(index, self.load_image(index))
        # Skipping on access: answer with the next readable sample, so batches keep their size.
        for step in range(len(self)):
            j = (index + step) % len(self)
            path = self.records[j].image
            if path in self._bad:
                continue
            try:
                return self._item(j, self.load_image(j))
            except DataError as e:
                self._bad[path] = str(e)
                self.skipped.append((path, str(e)))
                logger.warning("%s (skipped; run dataset.validate() to find all such images first)", e)
        raise DataError(f"{self.data_path}: no readable images")

    def validate(self, num_threads: int = 4) -> list[tuple[str, str]]:
        """Decode every image once. ``raise``: DataError if any is unreadable; ``skip``: drop their
        samples (updating ``skipped``) and return the (path, message) problems."""
        first: dict[str, CaptionRecord] = {}
        for r in self.records:
            first.setdefault(r.image, r)

        def check(record: CaptionRecord) -> DataError | None:
            try:
                self._load(record)
            except DataError as e:
                return e
            return None

        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            errors = [(path, e) for path, e in zip(first, pool.map(check, first.values())) if e is not None]
        if not errors:
            return []
        problems = [(path, str(e)) for path, e in errors]
        if self.config.on_error == "raise":
            more = f" (and {len(problems) - 1} more unreadable images)" if len(problems) > 1 else ""
            raise DataError(problems[0][1] + more)
        bad = {path for path, _ in problems}
        keep = [i for i, r in enumerate(self.records) if r.image not in bad]
        if not keep:
            raise DataError(f"{self.data_path}: no readable images")
        logger.warning(summarize_skipped(self.data_path, [e.reason for _, e in errors], len(first), "images"))
        self.records = [self.records[i] for i in keep]
        self._tokenize()
        self.skipped.extend(problems)
        self._bad.update(problems)
        return problems


class CaptionFormat:
    """A ``DatasetReader`` with the optional members filled in: subclasses set ``name`` (the component
    name) and ``has_splits`` and implement ``detect`` and ``read``; register an instance:
    ``register("myformat", "pkg.mod:MY_FORMAT", CaptionsOptions)``."""

    name: ClassVar[str] = ""
    has_splits: ClassVar[bool] = False  # whether ``read`` understands split="train"/"val"/"test"
    streaming: ClassVar[bool] = False  # read through ``stream`` (an IterableDataset), not ``read``

    def claims(self, spec: str) -> bool:
        """Whether a spec that is not one existing path is this format's (e.g. a shard pattern)."""
        return False

    def stream(self, spec: str, tokenizer: Any, config: Any, seed: int = 0, **options: Any) -> Any:
        """A streaming format's ``IterableDataset`` of ``spec``."""
        raise NotImplementedError

    def detect(self, path: Path) -> bool:
        """Whether ``path`` (an existing file or folder) looks like this format; cheap (reads a little)."""
        return False

    def read(self, path: str, image_root: str | None, on_error: str, split: str | None) -> Read:
        """Records of ``path``; images relative to ``image_root`` (None: the format's default). Raises
        ``DataError`` for whole-file problems, and for entry problems when ``on_error="raise"``."""
        raise NotImplementedError

    def __call__(self, options: Any, tokenizer: Any = None) -> Any:
        """The ``dataset`` component factory: an ``ImageTextDataset`` of ``options.data_path``."""
        from .data_config import dataset_config

        return ImageTextDataset(
            f"{self.name}:{options.data_path}",
            tokenizer=tokenizer,
            config=dataset_config(options),
            image_root=options.image_root,
            split=getattr(options, "split", None),
        )
