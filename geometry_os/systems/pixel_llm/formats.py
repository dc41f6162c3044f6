"""Caption-data formats: readers registered as ``dataset`` components, chosen by ``[FORMAT:]PATH``.

A format is a ``dataset`` component whose factory is a ``DatasetReader`` (``protocols.py``), usually an
instance of a ``dataset.CaptionFormat`` subclass: building it gives an ``ImageTextDataset``, and ``read`` /
``detect`` let every command (``train``, ``eval``, ``lint-data``) and ``ImageTextDataset`` itself read the
format through the registry, so a plugin adds a format without touching the core (docs/plugins.md shows
one). ``FORMAT:PATH`` names the format; a bare ``PATH`` is given to the one format whose ``detect``
accepts it (none or several: a one-line error naming them).
"""

from __future__ import annotations

import os
from pathlib import Path

from .images import DataError
from .protocols import DatasetReader
from .records import CaptionRecord, Read, Records, read_caption_file

__all__ = [
    "SPLITS",
    "CaptionRecord",
    "DatasetReader",
    "Read",
    "Records",
    "absolute_spec",
    "head",
    "read_caption_data",
    "registered_formats",
    "resolve",
    "split_for",
    "split_spec",
]

SPLITS = ("train", "val", "test")


def head(path: Path, size: int = 65536) -> str:
    """The first ``size`` bytes of a file as text (undecodable bytes replaced): for ``detect``."""
    with open(path, "rb") as f:
        return f.read(size).decode("utf-8", errors="replace").lstrip("\ufeff")


def registered_formats() -> dict[str, DatasetReader]:
    """Name -> format, for every ``dataset`` component whose factory is a ``DatasetReader``."""
    from geometry_os.host import get_host

    from .resolution import get_component

    found: dict[str, DatasetReader] = {}
    for name in get_host().system("pixel_llm").components.names("dataset"):
        factory = get_component("dataset", name).load()
        if isinstance(factory, DatasetReader):
            found[name] = factory
    return found


def split_spec(spec: str | os.PathLike, formats: dict[str, DatasetReader] | None = None) -> tuple[str | None, str]:
    """``"karpathy:data/x.json"`` -> ("karpathy", "data/x.json"); a prefix that names no format is part of
    the path (``C:/data``, ``a:b.json``)."""
    text = os.fspath(spec)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in (registered_formats() if formats is None else formats):
        return prefix, rest
    return None, text


def resolve(spec: str | os.PathLike) -> tuple[DatasetReader | None, str]:
    """The format and path of ``[FORMAT:]PATH``; format None when no format is registered (the core's
    JSON/JSONL/COCO reader then reads it). Raises ``DataError`` (missing path, no or several formats)."""
    formats = registered_formats()
    name, path = split_spec(spec, formats)
    if name is not None:
        return formats[name], path
    if not formats:
        return None, path
    claimed = [n for n, f in formats.items() if f.claims(path)]
    if len(claimed) == 1:
        return formats[claimed[0]], path
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such file or folder")
    try:
        matches = [n for n, f in formats.items() if f.detect(p)]
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not matches and p.suffix:  # a format serving the suffix reads the file anyway: its reader names the problem
        from .resolution import current_components

        components = current_components()
        matches = [n for n in formats if p.suffix in components.get("dataset", n).serves]
    if len(matches) == 1:
        return formats[matches[0]], path
    if not matches:
        raise DataError(
            f"{path}: not a caption file or folder of a known format; name one as FORMAT:{path} "
            f"(formats: {', '.join(sorted(formats))})"
        )
    raise DataError(f"{path}: could be {' or '.join(sorted(matches))}; name one as FORMAT:{path}")


def read_caption_data(
    spec: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    on_error: str = "raise",
    split: str | None = None,
) -> Read:
    """Records of ``[FORMAT:]PATH`` through its registered reader. ``split`` (train/val/test) selects a part
    of a split file; for a format without splits it is an error. See ``read_caption_file`` for the rest."""
    fmt, path = resolve(spec)
    if split is not None and split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if fmt is None:
        if split is not None:
            raise DataError(f"{path}: split={split!r} needs a format with splits")
        return read_caption_file(path, image_root, on_error)
    if split is not None and not fmt.has_splits:
        raise DataError(
            f"{path}: the {fmt.name} format has no splits (split={split!r} is for split files, e.g. karpathy)"
        )
    return fmt.read(path, None if image_root is None else os.fspath(image_root), on_error, split)


def split_for(spec: str | os.PathLike, split: str) -> str | None:
    """``split`` when ``spec``'s format has splits, else None: what ``train`` reads for its training
    (``train``) and validation (``val``) data from one split file."""
    fmt, _ = resolve(spec)
    return split if fmt is not None and fmt.has_splits else None


def absolute_spec(spec: str | os.PathLike) -> str:
    """``[FORMAT:]PATH`` with PATH made absolute (the trainer saves data paths so a resume finds them)."""
    name, path = split_spec(spec)
    absolute = str(Path(path).resolve())
    return f"{name}:{absolute}" if name else absolute
