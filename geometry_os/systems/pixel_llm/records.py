"""Caption files -> records: ``CaptionRecord``, the ``Records`` a format reader fills, and the core's readers.

Caption files (paths in them resolve against ``image_root``, by default the caption file's folder):

* JSON list, the original format: ``[{"image": "a.png", "caption": "..."}]``; an entry may give
  ``"captions": [...]`` instead. Problems name the entry by its 0-based position: ``entry 3``.
* JSON Lines (``.jsonl``): one such object per line; problems name the 1-based ``line``.
* COCO captions: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``.

Every caption is one record. Every user-facing problem is a one-line ``DataError`` naming the file and
the entry or image. Other formats are ``DatasetReader`` plugins (``formats.py``) that fill ``Records``
the same way. Plain Python: no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from geometry_os.fileio import parse_json, read_utf8
from geometry_os.systems.pixel_llm.images import DataError

ENTRY_KEYS = frozenset({"image", "caption", "captions"})
COCO_KEYS = frozenset({"images", "annotations", "info", "licenses", "type", "categories"})
COCO_IMAGE_KEYS = frozenset(
    {"id", "file_name", "width", "height", "license", "coco_url", "flickr_url", "date_captured"}
)
COCO_ANNOTATION_KEYS = frozenset({"id", "image_id", "caption"})


@dataclass(frozen=True)
class CaptionRecord:
    """One sample: an image path (resolved against the image root), a caption, and where it came from."""

    image: str
    caption: str
    where: str  # "entry 3", "line 4", "annotations[5]"
    position: int  # the number in ``where``


# What a reader returns: the records, the skipped entries as (position, message), and their reasons
# (the message without the location, for summaries such as "3x no such file").
Read = tuple[list[CaptionRecord], list[tuple[int, str]], list[str]]


class Records:
    """What a format reader fills while reading one file or folder.

    ``add(image, captions, where, position)`` resolves ``image`` against the image root and adds one
    record per caption; ``bad(position, where, reason)`` raises ``DataError`` (``on_error="raise"``) or
    records a skipped entry (``"skip"``). ``where`` of ``bad`` is appended to the file name (``": line 3"``);
    that of ``add`` stands alone (``"line 3"``). ``result()`` is the reader's ``Read``.
    """

    def __init__(self, data_path: str | os.PathLike, image_root: str | os.PathLike | None, on_error: str) -> None:
        self.name = str(data_path)
        self.root = str(image_root) if image_root is not None else os.path.dirname(self.name)
        self.on_error = on_error
        self.records: list[CaptionRecord] = []
        self.skipped: list[tuple[int, str]] = []
        self.reasons: list[str] = []

    def bad(self, position: int, where: str, reason: str) -> None:
        """An entry problem: ``DataError("<file><where>: <reason>")`` or, when skipping, a skipped entry."""
        message = f"{self.name}{where}: {reason}"
        if self.on_error == "raise":
            raise DataError(message, reason)
        self.skipped.append((position, message))
        self.reasons.append(reason)

    def add(self, image: str, captions: list[str], where: str, position: int) -> None:
        """One record per caption of ``image`` (a path relative to the image root, or absolute)."""
        path = os.path.normpath(os.path.join(self.root, image))
        self.records.extend(CaptionRecord(path, c, where, position) for c in captions)

    def result(self) -> Read:
        """(records, skipped (position, message), reasons)."""
        return self.records, self.skipped, self.reasons


class _Bad(Exception):
    """An entry-level problem; the caller adds the file and the entry's position."""


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _nonempty_str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"{name} must be a non-empty string, got {_short(value)}")
    return value


def _check_keys(obj: Any, allowed: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _Bad(f"expected {what}, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:  # the key is JSON-escaped: it may hold control characters
            raise _Bad(
                f"unknown key {json.dumps(key, ensure_ascii=False)[:60]} (allowed: {', '.join(sorted(allowed))})"
            )
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


def _read_list(out: Records, data: list[Any]) -> None:
    for i, obj in enumerate(data):
        try:
            image, captions = _parse_entry(obj)
        except _Bad as e:
            out.bad(i, f": entry {i}", str(e))
            continue
        out.add(image, captions, f"entry {i}", i)


def _read_jsonl(out: Records, text: str) -> None:
    for n, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            image, captions = _parse_entry(json.loads(line))
        except json.JSONDecodeError as e:
            out.bad(n, f":{n}:{e.colno}", f"malformed JSON: {e.msg}")
            continue
        except RecursionError:
            out.bad(n, f": line {n}", "malformed JSON: nested too deeply")
            continue
        except _Bad as e:
            out.bad(n, f": line {n}", str(e))
            continue
        out.add(image, captions, f"line {n}", n)


def _read_coco(out: Records, data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - COCO_KEYS)
    if unknown:
        raise DataError(f'{out.name}: unknown top-level COCO key "{unknown[0]}"')
    for key in ("images", "annotations"):
        if not isinstance(data[key], list):
            raise DataError(f'{out.name}: "{key}" must be a list, got {type(data[key]).__name__}')
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
            out.bad(i, f": images[{i}]", str(e))
    for i, obj in enumerate(data["annotations"]):
        try:
            _check_keys(obj, COCO_ANNOTATION_KEYS, 'an object with "image_id" and "caption"')
            image_id = obj.get("image_id")
            if image_id not in files:
                raise _Bad(f'"image_id" {_short(image_id)} is not the "id" of a valid entry in "images"')
            caption = _nonempty_str(obj.get("caption"), '"caption"')
        except (_Bad, TypeError) as e:  # TypeError: an unhashable image_id
            out.bad(i, f": annotations[{i}]", str(e))
            continue
        out.add(files[image_id], [caption], f"annotations[{i}]", i)


def read_text(path: str, expected: str = "a file") -> str:
    """The UTF-8 text of a data file; ``DataError`` naming ``path`` when it is
    missing, a folder (``expected`` says what should be there), unreadable or not UTF-8."""
    try:
        return read_utf8(path, DataError)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected {expected}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None


def read_caption_file(
    data_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    on_error: str = "raise",
    kind: str | None = None,
) -> Read:
    """Parse a JSON list, JSON Lines or COCO captions file: records, skipped (position, message) and their
    reasons. ``kind`` ("json", "jsonl", "coco") insists on one; None decides by the suffix and the shape.
    Other formats are read through the registry: ``formats.read_caption_data``.

    Entries are skipped only with ``on_error="skip"``; whole-file problems (missing, malformed JSON,
    wrong top-level shape) always raise ``DataError``.
    """
    out = Records(data_path, image_root, on_error)
    text = read_text(out.name, "a caption file")
    if kind == "jsonl" or (kind is None and out.name.endswith(".jsonl")):
        _read_jsonl(out, text)
        return out.result()
    data = parse_json(text, out.name, DataError)
    if isinstance(data, list) and kind in (None, "json"):
        _read_list(out, data)
    elif isinstance(data, dict) and "images" in data and "annotations" in data and kind in (None, "coco"):
        _read_coco(out, data)
    else:
        keys = ""
        if isinstance(data, dict):
            keys = f" with keys {', '.join(json.dumps(k, ensure_ascii=False) for k in sorted(data))[:60]}"
        raise DataError(
            f'{out.name}: expected a JSON list of {{"image", "caption"}} entries or a COCO object with '
            f'"images" and "annotations", got {type(data).__name__}{keys}'
        )
    return out.result()
