"""Image-caption data: caption files -> samples -> tensors -> padded batches.

Caption files (paths in them resolve against ``image_root``, by default the caption file's folder):

* JSON list, the original format: ``[{"image": "a.png", "caption": "..."}]``; an entry may give
  ``"captions": [...]`` instead. Problems name the entry by its 0-based position: ``entry 3``.
* JSON Lines (``.jsonl``): one such object per line; problems name the 1-based ``line``.
* COCO captions: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``.

Every caption is one sample; ``references`` groups the captions of each image for evaluation.
Every user-facing problem is a one-line ``DataError`` naming the file and the entry or image.
Images (``load_image``, the one loader of training, captioning, evaluation, explain and lint-data):
any Pillow mode becomes the RGB picture a viewer shows (alpha composited on black, the background of
the synthetic scenes; 16-bit, 32-bit and float grey scaled from full scale; CMYK through its ICC
profile; see ``to_rgb``), EXIF orientation is applied, and sizes are checked from the header before
decoding (``max_image_pixels``). Augmentation never flips: captions say "left of".
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from geometry_os.fileio import parse_json, read_utf8
from geometry_os.systems.pixel_llm.data_config import DatasetConfig
from geometry_os.systems.pixel_llm.images import DataError, load_image, to_rgb  # noqa: F401  (re-exported)
from geometry_os.systems.pixel_llm.protocols import EOS_ID, PAD_ID

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
ENTRY_KEYS = frozenset({"image", "caption", "captions"})
COCO_KEYS = frozenset({"images", "annotations", "info", "licenses", "type", "categories"})
COCO_IMAGE_KEYS = frozenset(
    {"id", "file_name", "width", "height", "license", "coco_url", "flickr_url", "date_captured"}
)
COCO_ANNOTATION_KEYS = frozenset({"id", "image_id", "caption"})


class _Bad(Exception):
    """An entry-level problem; the caller adds the file and the entry's position."""


@dataclass(frozen=True)
class CaptionRecord:
    """One sample: an image path (resolved against the image root), a caption, and where it came from."""

    image: str
    caption: str
    where: str  # "entry 3", "line 4", "annotations[5]"
    position: int  # the number in ``where``


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _nonempty_str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"{name} must be a non-empty string, got {_short(value)}")
    return value


def _check_keys(obj: Any, allowed: frozenset, what: str) -> dict:
    if not isinstance(obj, dict):
        raise _Bad(f"expected {what}, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            raise _Bad(
                f"unknown key {json.dumps(key, ensure_ascii=False)[:60]} (allowed: {', '.join(sorted(allowed))})"
            )  # escaped
    return obj


def _parse_entry(obj: Any) -> tuple[str, list[str]]:
    """``{"image": str, "caption": str}`` or ``{"image": str, "captions": [str, ...]}``."""
    _check_keys(obj, ENTRY_KEYS, 'an object with "image" and "caption"')
    if "image" not in obj:
        raise _Bad('missing "image"')
    image = _nonempty_str(obj["image"], '"image"')
    if ("caption" in obj) == ("captions" in obj):
        raise _Bad('needs exactly one of "caption" or "captions"')
    if "caption" in obj:
        return image, [_nonempty_str(obj["caption"], '"caption"')]
    captions = obj["captions"]
    if not isinstance(captions, list) or not captions:
        raise _Bad(f'"captions" must be a non-empty list of strings, got {_short(captions)}')
    return image, [_nonempty_str(c, f'"captions"[{j}]') for j, c in enumerate(captions)]


class _Reader:
    """Reads one caption file into records, raising or collecting entry problems per ``on_error``."""

    def __init__(
        self, data_path: str | os.PathLike, image_root: str | os.PathLike | None, on_error: str, kind: str | None = None
    ):
        self.name = str(data_path)
        self.root = str(image_root) if image_root is not None else os.path.dirname(self.name)
        self.on_error = on_error
        self.kind = kind  # "json" (a list), "jsonl" or "coco"; None: by the suffix and the top-level shape
        self.records: list[CaptionRecord] = []
        self.skipped: list[tuple[int, str]] = []
        self.reasons: list[str] = []

    def bad(self, position: int, where: str, reason: str) -> None:
        message = f"{self.name}{where}: {reason}"
        if self.on_error == "raise":
            raise DataError(message, reason)
        self.skipped.append((position, message))
        self.reasons.append(reason)

    def add(self, image: str, captions: list[str], where: str, position: int) -> None:
        path = os.path.normpath(os.path.join(self.root, image))
        self.records.extend(CaptionRecord(path, c, where, position) for c in captions)

    def read(self) -> None:
        try:
            text = read_utf8(self.name, DataError)
        except FileNotFoundError:
            raise DataError(f"{self.name}: no such file") from None
        except IsADirectoryError:
            raise DataError(f"{self.name}: is a directory, expected a caption file") from None
        except OSError as e:
            raise DataError(f"{self.name}: cannot read: {e.strerror}") from None
        if self.kind == "jsonl" or (self.kind is None and self.name.endswith(".jsonl")):
            self.read_jsonl(text)
            return
        data = parse_json(text, self.name, DataError)
        if isinstance(data, list) and self.kind in (None, "json"):
            self.read_list(data)
        elif isinstance(data, dict) and "images" in data and "annotations" in data and self.kind in (None, "coco"):
            self.read_coco(data)
        else:
            raise DataError(
                f'{self.name}: expected a JSON list of {{"image", "caption"}} entries or a COCO object with '
                f'"images" and "annotations", got {type(data).__name__}'
                + (
                    f" with keys {', '.join(json.dumps(k, ensure_ascii=False) for k in sorted(data))[:60]}"
                    if isinstance(data, dict)
                    else ""
                )
            )

    def read_list(self, data: list) -> None:
        for i, obj in enumerate(data):
            try:
                image, captions = _parse_entry(obj)
            except _Bad as e:
                self.bad(i, f": entry {i}", str(e))
                continue
            self.add(image, captions, f"entry {i}", i)

    def read_jsonl(self, text: str) -> None:
        for n, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a string
            if not line.strip():
                continue
            try:
                image, captions = _parse_entry(json.loads(line))
            except json.JSONDecodeError as e:
                self.bad(n, f":{n}:{e.colno}", f"malformed JSON: {e.msg}")
                continue
            except RecursionError:
                self.bad(n, f": line {n}", "malformed JSON: nested too deeply")
                continue
            except _Bad as e:
                self.bad(n, f": line {n}", str(e))
                continue
            self.add(image, captions, f"line {n}", n)

    def read_coco(self, data: dict) -> None:
        unknown = sorted(set(data) - COCO_KEYS)
        if unknown:
            raise DataError(f'{self.name}: unknown top-level COCO key "{unknown[0]}"')
        for key in ("images", "annotations"):
            if not isinstance(data[key], list):
                raise DataError(f'{self.name}: "{key}" must be a list, got {type(data[key]).__name__}')
        files: dict[Any, str] = {}
        for i, obj in enumerate(data["images"]):
            try:
                _check_keys(obj, COCO_IMAGE_KEYS, 'an object with "id" and "file_name"')
                if "id" not in obj or not isinstance(obj["id"], (int, str)) or isinstance(obj["id"], bool):
                    raise _Bad(f'"id" must be an integer or string, got {_short(obj.get("id"))}')
                if obj["id"] in files:
                    raise _Bad(f'duplicate "id" {_short(obj["id"])}')
                files[obj["id"]] = _nonempty_str(obj.get("file_name"), '"file_name"')
            except _Bad as e:
                self.bad(i, f": images[{i}]", str(e))
        for i, obj in enumerate(data["annotations"]):
            try:
                _check_keys(obj, COCO_ANNOTATION_KEYS, 'an object with "image_id" and "caption"')
                image_id = obj.get("image_id")
                if image_id not in files:
                    raise _Bad(f'"image_id" {_short(image_id)} is not the "id" of a valid entry in "images"')
                caption = _nonempty_str(obj.get("caption"), '"caption"')
            except (_Bad, TypeError) as e:  # TypeError: an unhashable image_id
                self.bad(i, f": annotations[{i}]", str(e))
                continue
            self.add(files[image_id], [caption], f"annotations[{i}]", i)


def read_caption_file(
    data_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    on_error: str = "raise",
    kind: str | None = None,
) -> tuple[list[CaptionRecord], list[tuple[int, str]], list[str]]:
    """Parse a JSON list, JSON Lines or COCO captions file: records, skipped (position, message) and their
    reasons. ``kind`` ("json", "jsonl", "coco") insists on one; None decides by the suffix and the shape.
    Other formats are read through the registry: ``formats.read_caption_data``.

    Entries are skipped only with ``on_error="skip"``; whole-file problems (missing, malformed JSON,
    wrong top-level shape) always raise ``DataError``.
    """
    reader = _Reader(data_path, image_root, on_error, kind)
    reader.read()
    return reader.records, reader.skipped, reader.reasons


class Rescale:
    """Multiply by a constant (a class, not a lambda, so DataLoader workers can pickle the transform)."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def build_transform(config: DatasetConfig) -> v2.Compose:
    """Resize (squash: no crop can drop an object at an edge) and normalise; ``augment`` adds a mild
    random resized crop and brightness/contrast/saturation jitter (no hue: captions name colours, no flip)."""
    size = (config.image_size, config.image_size)
    mode = v2.InterpolationMode.BICUBIC if config.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
    if config.augment:
        geometry = [
            v2.RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(0.95, 1.05), interpolation=mode, antialias=True)
        ]
        colour = [v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)]
    elif config.resize == "shorter_crop":  # timm's eval transform: floor(size / crop_pct), centre crop
        geometry = [
            v2.Resize(math.floor(config.image_size / config.crop_pct), interpolation=mode, antialias=True),
            v2.CenterCrop(size),
        ]
        colour = []
    else:
        geometry, colour = [v2.Resize(size, interpolation=mode, antialias=True)], []
    scale = [] if abs(config.rescale_factor * 255 - 1) < 1e-12 else [Rescale(config.rescale_factor * 255)]
    return v2.Compose(
        [
            *geometry,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            *scale,
            *colour,
            v2.Normalize(list(config.mean), list(config.std)),
        ]
    )


def truncate(ids: list[int], max_length: int, eos_token_id: int = EOS_ID) -> list[int]:
    """Cut to ``max_length`` tokens; a final ``<eos>`` (the tokenizer's ``eos_token_id``) is kept so the
    model still learns to stop."""
    if len(ids) <= max_length:
        return ids
    return ids[: max_length - 1] + [eos_token_id] if ids[-1] == eos_token_id else ids[:max_length]


def special_id(tokenizer: Any, name: str, default: int) -> int:
    """``tokenizer.<name>`` (e.g. ``eos_token_id``) when it declares one, else ``default``."""
    value = getattr(tokenizer, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def resolve_tokenizer(tokenizer: Any, captions: Sequence[str]) -> tuple[Any, Callable[[str], Sequence[int]]]:
    """(tokenizer object or None, encode function). None trains the registry's default tokenizer on
    ``captions``, a tokenizer component's name (``"bpe"``) trains that one (ComponentError if unknown)."""
    if tokenizer is None or isinstance(tokenizer, str):
        from geometry_os.systems.pixel_llm.components import get_component

        tokenizer = get_component("tokenizer", tokenizer).load().train(list(captions), None)
    if callable(getattr(tokenizer, "encode", None)):
        return tokenizer, tokenizer.encode
    if callable(tokenizer):
        owner = getattr(tokenizer, "__self__", None)  # ``vocab.encode`` -> keep ``vocab`` for decoding
        return (owner if callable(getattr(owner, "decode", None)) else None), tokenizer
    raise TypeError(f"tokenizer must be a callable text -> ids or have .encode, got {type(tokenizer).__name__}")


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


# -------------------------------------------------------------------------------------------- dataset


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
    image's references (``dataset.references``), in the order ``metrics.caption_metrics`` takes them."""
    if len(predictions) != len(dataset.records):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset.records)} samples")
    by_image = dict(zip((r.image for r in dataset.records), predictions))
    references = dataset.references
    return [by_image[image] for image, _ in references], [refs for _, refs in references]


class CaptionTokens:
    """Token ids of all captions in one flat tensor (no per-caption Python objects for workers to copy)."""

    def __init__(
        self,
        encode: Callable[[str], Sequence[int]],
        captions: Sequence[str],
        max_length: int,
        eos_token_id: int = EOS_ID,
    ):
        rows = [truncate([int(i) for i in encode(c)], max_length, eos_token_id) for c in captions]
        self.lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        self.flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.flat[self.offsets[index] : self.offsets[index + 1]].clone()


class CaptionedImages(Dataset):
    """Shared behaviour of the caption datasets: item dict, ``captions``, ``references``, ``image_paths``."""

    records: list[CaptionRecord]

    @property
    def captions(self) -> list[str]:
        return [r.caption for r in self.records]

    @property
    def references(self) -> list[tuple[str, list[str]]]:
        """(image path, all its captions) per image, in order of first appearance: for evaluation."""
        return group_references((r.image, r.caption) for r in self.records)

    @property
    def image_paths(self) -> list[str]:
        return list(dict.fromkeys(r.image for r in self.records))

    @property
    def lengths(self) -> list[int]:
        """Token count of every sample (for length-bucketing samplers)."""
        return self.tokens.lengths.tolist()

    def __len__(self) -> int:
        return len(self.records)


class ImageTextDataset(CaptionedImages):
    """Samples of a caption file (see the module docstring); images are read lazily on access.

    ``tokenizer``: a tokenizer object (its ``encode`` is used; kept as ``self.tokenizer``), any callable
    text -> ids (``vocab.encode`` keeps ``vocab``), or None to train the ``simple`` vocabulary on this
    file's captions (then pass ``dataset.tokenizer`` to the validation set so ids agree).
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        tokenizer: Any = None,
        config: DatasetConfig | dict | None = None,
        image_root: str | os.PathLike | None = None,
        split: str | None = None,
    ):
        from .formats import read_caption_data

        self.config = DatasetConfig(**config) if isinstance(config, dict) else (config or DatasetConfig())
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
        self.tokens = CaptionTokens(
            self._encode, self.captions, self.config.max_length, special_id(self.tokenizer, "eos_token_id", EOS_ID)
        )
        self.transform = build_transform(self.config)
        self._bad: dict[str, str] = {}  # image path -> message, found on access when skipping

    def _label(self, record: CaptionRecord) -> str:
        return f"{record.image} ({self.data_path} {record.where})"

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index`` (DataError when unreadable)."""
        record = self.records[index]
        return load_image(record.image, self.config.max_image_pixels, self._label(record), self.config.image_size)

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
                load_image(record.image, self.config.max_image_pixels, self._label(record), self.config.image_size)
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
        self.tokens = CaptionTokens(
            self._encode, self.captions, self.config.max_length, special_id(self.tokenizer, "eos_token_id", EOS_ID)
        )
        self.skipped.extend(problems)
        self._bad.update(problems)
        return problems


# ------------------------------------------------------------------------------------------ batching


class CaptionCollator:
    """Stack images and pad captions to the longest in the batch; a class so DataLoader workers can pickle it.

    ``labels`` are ``input_ids`` with padding set to -100 (ignored by cross-entropy); shifting for
    next-token prediction is the model's business.
    """

    def __init__(self, pad_token_id: int = PAD_ID):
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        length = max((len(item["input_ids"]) for item in items), default=0)
        input_ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = item["input_ids"]
            attention_mask[row, :n] = 1
        return {
            "images": torch.stack([item["image"] for item in items]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX),
            "captions": [item["caption"] for item in items],
            "image_paths": [item["image_path"] for item in items],
            "indices": torch.tensor([item["index"] for item in items], dtype=torch.long),
        }


def create_dataloader(
    dataset: Dataset,
    batch_size: int = 32,
    shuffle: bool = True,
    num_workers: int = 0,
    pad_token_id: int = PAD_ID,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    sampler: Any = None,
    pin_memory: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader with ``CaptionCollator``; a ``sampler`` replaces ``shuffle``; extra kwargs go to DataLoader."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=CaptionCollator(pad_token_id),
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
        **kwargs,
    )
