"""``lint-data``: every problem of one or more caption files at once, as a report (dict or text).

Everything ``train`` would refuse is an error, everything it would silently degrade a warning.

Errors (exit 1): unreadable files, bad entries, a file without any usable entry (an empty list, COCO
without annotations), missing/corrupt/oversized images, and an image (same path or same bytes) used by
two of the files, e.g. train and val. Warnings: duplicate entries (same image and caption), identical
image bytes under two paths in one file, COCO images without a caption (never used), images that load
as a single colour (e.g. a dark drawing on a transparent background: alpha is flattened onto black), and
words of the other files (validation, test) that the training vocabulary lacks (the first file's, as
``train`` builds it, or ``--vocab``'s): the model can never produce them. Also: caption lengths (words,
or tokens of ``--vocab``) and the out-of-vocabulary rate.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean
from typing import Any

from geometry_os.fileio import parse_json, read_utf8
from geometry_os.systems.pixel_llm.plugin_api import (
    CaptionRecord,
    DataError,
    DatasetConfig,
    caption_words,
    load_image,
    normalize_caption,
    read_caption_data,
    split_spec,
)
from geometry_os.systems.pixel_llm.plugin_api import resolve_format as resolve

MISSING_WORDS_SHOWN = 8


def load_vocab(path: str | os.PathLike) -> Any:
    """A saved tokenizer: an imported model's (``"format": "geometry_os.hf_tokenizer"``) is ``hf``, an HF
    tokenizers JSON (has "model") ``bpe``, anything else ``simple``. Raises ``ValueError`` naming the file
    when it is not valid JSON or not a file the tokenizer can load."""
    from geometry_os.errors import GeometryOSError
    from geometry_os.systems.pixel_llm.plugin_api import get_component

    data = parse_json(read_utf8(path), path)
    name = "bpe" if isinstance(data, dict) and "model" in data else "simple"
    if isinstance(data, dict) and data.get("format") == "geometry_os.hf_tokenizer":
        name = "hf"
    try:
        tokenizer_class: Any = get_component("tokenizer", name).load()
        return tokenizer_class.load(path)
    except GeometryOSError as e:
        raise ValueError(f"{path}: {e}") from None


def histogram(lengths: Sequence[int], bins: int = 8) -> dict[str, int]:
    """Counts of lengths in about ``bins`` equal ranges, labelled "lo-hi"."""
    if not lengths:
        return {}
    width = max(1, math.ceil(max(lengths) / bins))
    counts: dict[str, int] = {}
    for lo in range(1 if min(lengths) > 0 else 0, max(lengths) + 1, width):
        hi = lo + width - 1
        counts[str(lo) if width == 1 else f"{lo}-{hi}"] = sum(lo <= n <= hi for n in lengths)
    return counts


def _caption_stats(records: Sequence[CaptionRecord], tokenizer: Any) -> tuple[dict, dict | None]:
    if tokenizer is None:
        lengths = [len(caption_words(r.caption)) for r in records]
        return {"unit": "words", **_summary(lengths)}, None
    ids = [tokenizer.encode(r.caption, add_special_tokens=False) for r in records]
    lengths = [len(row) for row in ids]
    unknown = sum(row.count(tokenizer.unk_token_id) for row in ids)
    total = sum(lengths)
    oov = {"rate": unknown / total if total else 0.0, "unknown": unknown, "total": total}
    return {"unit": "tokens", **_summary(lengths)}, oov


def _summary(lengths: list[int]) -> dict:
    if not lengths:
        return {"min": 0, "max": 0, "mean": 0.0, "histogram": {}}
    return {"min": min(lengths), "max": max(lengths), "mean": round(mean(lengths), 2), "histogram": histogram(lengths)}


def _check_images(path: str, records: list[CaptionRecord], max_pixels: int, threads: int) -> list[tuple]:
    """(record, error message or None, content digest or None) for the first record of each image."""
    first: dict[str, CaptionRecord] = {}
    for r in records:
        first.setdefault(r.image, r)

    def check(record: CaptionRecord) -> tuple:
        label = f"{record.image} ({path} {record.where})"
        try:
            rgb = load_image(record.image, max_pixels, label)
            digest = hashlib.blake2b(Path(record.image).read_bytes(), digest_size=16).hexdigest()
        except DataError as e:
            return record, str(e), None, None
        except OSError as e:
            return record, f"{label}: cannot read: {e.strerror}", None, None
        return record, None, digest, _single_colour(record.image, rgb, label)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(check, first.values()))


def _single_colour(path: str, rgb: Any, label: str) -> str | None:
    """A warning when the RGB image train sees is one flat colour (no content to caption), else None."""
    if any(low != high for low, high in rgb.getextrema()):
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    except OSError:  # pragma: no cover - it was just read
        transparent = False
    if transparent:
        return (
            f"{label}: becomes a single colour {rgb.getpixel((0, 0))} once its transparency is flattened "
            "onto black, as train does (a dark drawing on a transparent background?); flatten it onto a "
            "light background first"
        )
    return f"{label}: is a single colour {rgb.getpixel((0, 0))} as loaded: there is nothing to caption"


def _coco_images_without_captions(path: str) -> list[str]:
    """``file_name`` of the COCO images that no annotation refers to (train never sees them)."""
    _, path = split_spec(path)
    if not os.path.isfile(path):
        return []
    try:
        data = parse_json(read_utf8(path), path, DataError)
    except (DataError, OSError, UnicodeDecodeError):
        return []
    if not (
        isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list)
    ):
        return []
    used = {a.get("image_id") for a in data["annotations"] if isinstance(a, dict) and _hashable(a.get("image_id"))}
    return [
        str(i.get("file_name"))
        for i in data["images"]
        if isinstance(i, dict) and _hashable(i.get("id")) and i.get("id") not in used
    ]


def _hashable(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def lint_stream(report: dict[str, Any], spec: str, limit: int) -> dict[str, Any]:
    """WebDataset shards, streamed (nothing unpacked): the first ``limit`` samples decoded and their
    captions checked, in shard order."""
    from .shards import expand_shards, raw_samples, sample_captions, sample_image

    shards = expand_shards(spec)
    seen = 0
    for sample in raw_samples(shards):
        if seen >= limit:
            report["warnings"].append(f"{spec}: stopped after --limit {limit} samples")
            break
        seen += 1
        label = f"{sample.get('__url__')}: {sample.get('__key__')}"
        try:
            sample_image(sample)
            report["samples"] += len(sample_captions(sample))
            report["images"] += 1
        except (ValueError, OSError) as exc:
            report["errors"].append(f"{label}: {' '.join(str(exc).split())}")
    report["entries"] = seen
    report["shards"] = len(shards)
    return report


def lint_file(
    path: str,
    tokenizer: Any,
    image_root: Any,
    max_pixels: int,
    threads: int,
    split: str | None = None,
    limit: int = 1000,
) -> tuple[dict, list, list]:
    """The report of one file (any registered format), its (record, digest) pairs for the checks across
    files, and its records (for the vocabulary check of later files)."""
    report: dict[str, Any] = {"path": path, "entries": 0, "samples": 0, "images": 0, "errors": [], "warnings": []}
    try:
        fmt, spec = resolve(path)
        if fmt is not None and fmt.streaming:
            return lint_stream(report, spec, limit), [], []
        records, skipped, _ = read_caption_data(path, image_root, on_error="skip", split=split)
    except DataError as e:
        report["errors"].append(str(e))
        return report, [], []
    report["errors"] += [message for _, message in skipped]
    report["entries"] = len({r.where for r in records}) + len(skipped)
    report["samples"] = len(records)
    if not records:
        report["errors"].append(f"{path}: no usable entries (no image with a caption): train refuses this file")
    unused = _coco_images_without_captions(path)
    if unused:
        shown = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "")
        report["warnings"].append(
            f'{path}: {len(unused)} of its images have no caption in "annotations" and are never used: {shown}'
        )
    checked = _check_images(path, records, max_pixels, threads)
    report["images"] = len(checked)
    report["errors"] += [error for _, error, _, _ in checked if error]
    report["warnings"] += [flat for _, _, _, flat in checked if flat]

    seen: dict[tuple[str, str], str] = {}
    for r in records:
        key = (r.image, normalize_caption(r.caption))
        if key in seen:
            report["warnings"].append(f"{path}: {r.where}: duplicates {seen[key]} (same image and caption)")
        seen.setdefault(key, r.where)
    by_digest: dict[str, CaptionRecord] = {}
    for r, _, digest, _ in checked:
        if digest in by_digest:
            other = by_digest[digest]
            report["warnings"].append(
                f"{path}: {r.where} ({r.image}) has the same bytes as {other.where} ({other.image})"
            )
        elif digest:
            by_digest[digest] = r
    report["caption_lengths"], oov = _caption_stats(records, tokenizer)
    if oov is not None:
        report["oov"] = oov
    return report, [(r, digest) for r, _, digest, _ in checked], records


def lint_files(
    paths: Sequence[str],
    tokenizer: Any = None,
    vocab_path: Any = None,
    image_root: Any = None,
    max_image_pixels: int = DatasetConfig().max_image_pixels,
    threads: int = 4,
    split: str | None = None,
    limit: int = 1000,
) -> dict[str, Any]:
    """Report on ``paths`` (``[FORMAT:]PATH``, each checked once): per file, then images shared across files.
    ``split``: only that part of split files (karpathy)."""
    paths = list(dict.fromkeys(paths))
    report: dict[str, Any] = {"files": [], "across_files": [], "vocab": str(vocab_path) if vocab_path else None}
    by_path: dict[str, dict[str, CaptionRecord]] = {}  # real image path -> {caption file: record}
    by_bytes: dict[str, dict[str, CaptionRecord]] = {}  # digest -> {caption file: record}
    captions: dict[str, list[CaptionRecord]] = {}
    for path in paths:
        file_report, images, captions[path] = lint_file(
            path, tokenizer, image_root, max_image_pixels, threads, split, limit
        )
        report["files"].append(file_report)
        for record, digest in images:
            by_path.setdefault(os.path.realpath(record.image), {}).setdefault(path, record)
            if digest:
                by_bytes.setdefault(digest, {}).setdefault(path, record)
    shared = report["across_files"]
    for owners in by_path.values():
        if len(owners) > 1:
            (a, ra), (b, rb) = list(owners.items())[:2]
            shared.append(f"{ra.image} is used by {a} ({ra.where}) and {b} ({rb.where})")
    for owners in by_bytes.values():
        if len(owners) > 1 and len({os.path.realpath(r.image) for r in owners.values()}) > 1:
            (a, ra), (b, rb) = list(owners.items())[:2]
            shared.append(f"{a} ({ra.where}, {ra.image}) and {b} ({rb.where}, {rb.image}) have identical images")
    _report_missing_words(report["files"], captions, tokenizer, vocab_path)
    report["errors"] = sum(len(f["errors"]) for f in report["files"]) + len(shared)
    report["warnings"] = sum(len(f["warnings"]) for f in report["files"])
    return report


def _report_missing_words(
    files: list[dict[str, Any]], captions: dict[str, list[CaptionRecord]], tokenizer: Any, vocab_path: Any
) -> None:
    """Warn, per file, about the words the training vocabulary cannot spell: ``--vocab``'s for every file,
    else the one ``train`` would build from the first file's captions, for the other files."""
    paths = list(captions)
    if tokenizer is None:
        if len(paths) < 2 or not captions[paths[0]]:
            return
        from geometry_os.systems.pixel_llm.plugin_api import get_component

        tokenizer_class: Any = get_component("tokenizer").load()
        tokenizer = tokenizer_class.train([r.caption for r in captions[paths[0]]], None)
        source, checked = f"the vocabulary train builds from {paths[0]}", paths[1:]
    else:
        source, checked = f"{vocab_path}", paths
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    known: dict[str, bool] = {}
    for f in files:
        if f["path"] not in checked:
            continue
        missing: Counter[str] = Counter()
        for record in captions[f["path"]]:
            for word in _words(tokenizer, record.caption):
                if word not in known:
                    known[word] = unk not in tokenizer.encode(word, add_special_tokens=False)
                if not known[word]:
                    missing[word] += 1
        if missing:
            shown = ", ".join(f"{w!r} ({n}x)" for w, n in missing.most_common(MISSING_WORDS_SHOWN))
            more = f", and {len(missing) - MISSING_WORDS_SHOWN} more" if len(missing) > MISSING_WORDS_SHOWN else ""
            f["warnings"].append(
                f"{f['path']}: {len(missing)} word{'s' * (len(missing) != 1)} not in {source}, so the "
                f"model can never produce them: {shown}{more}"
            )


def _words(tokenizer: Any, text: str) -> list[str]:
    """The tokenizer's own tokens of ``text`` (normalised words and punctuation for ``simple``), else words."""
    tokenize = getattr(tokenizer, "tokenize", None)
    return tokenize(text) if callable(tokenize) else text.split()


def format_report(report: dict[str, Any]) -> str:
    """The report as text: one block per file, then the problems across files and a total."""
    lines = []
    for f in report["files"]:
        lines.append(f"{f['path']}: {f['entries']} entries, {f['samples']} captions, {f['images']} images")
        lines += [f"  error: {e}" for e in f["errors"]]
        lines += [f"  warning: {w}" for w in f["warnings"]]
        if "caption_lengths" in f:
            c = f["caption_lengths"]
            bars = ", ".join(f"{k}: {v}" for k, v in c["histogram"].items())
            lines.append(f"  caption length ({c['unit']}): min {c['min']}, mean {c['mean']}, max {c['max']}; {bars}")
        if "oov" in f:
            o = f["oov"]
            lines.append(f"  out of vocabulary: {o['rate']:.2%} ({o['unknown']} of {o['total']} tokens)")
    if report["across_files"]:
        lines.append("across files:")
        lines += [f"  error: {e}" for e in report["across_files"]]
    e, w = report["errors"], report["warnings"]
    lines.append(f"{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}")
    return "\n".join(lines)
