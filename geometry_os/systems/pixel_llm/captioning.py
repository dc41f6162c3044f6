"""Captioning and evaluation on image files: what the ``caption`` / ``eval`` commands and the
``pixel_llm.caption`` / ``pixel_llm.evaluate`` system calls run.

Images are streamed in batches (memory stays bounded however many there are), each preprocessed
exactly as in training (the model config's image size, mean and std). Torch is imported by the
functions that run a model, so finding images and ``CaptionResult`` serve torch-free runtimes too.
"""

from __future__ import annotations

import glob
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geometry_os.errors import GeometryOSError

from .data_config import DatasetConfig
from .generation_config import GenerationConfig
from .images import DataError, load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class SkippedFoldersWarning(UserWarning):
    """A folder argument has sub-folders that were not searched (no ``recursive``)."""


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _folder_images(folder: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """Image files of ``folder`` (sorted; below it too when ``recursive``) and the sub-folders left out.
    Dot-files and dot-folders are skipped, as ``ls`` and shell globs do."""
    found: list[Path] = []
    unsearched: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        if not recursive:
            unsearched = [Path(root) / d for d in dirs]
            dirs[:] = []
        here = Path(root)
        found.extend(
            here / f
            for f in sorted(files)
            if not _hidden(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES and (here / f).is_file()
        )
    return found, unsearched


def _unsearched(folders: Sequence[Path], what: str) -> str:
    if not folders:
        return ""
    names = ", ".join(p.name for p in folders[:3]) + (", ..." if len(folders) > 3 else "")
    return f"{len(folders)} {what} not searched ({names}; use --recursive)"


def expand_image_args(args: Sequence[str], recursive: bool = False) -> list[Path]:
    """IMAGE, DIR or GLOB arguments -> image paths, in argument order.

    A DIR gives its image files (by suffix, sorted), without dot-files; with ``recursive`` those of
    its sub-folders too (depth first, sorted, dot-folders skipped), else a ``SkippedFoldersWarning``
    names the sub-folders left out. A GLOB follows Python's ``glob`` (``**`` spans folders); folders it
    matches are searched like folder arguments with ``recursive``, else named in the warning. Raises
    ``GeometryOSError`` for a missing file, a folder without images or a pattern matching nothing.
    """
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found, unsearched = _folder_images(path, recursive)
            skipped = _unsearched(unsearched, "sub-folder(s)")
            if not found:
                raise GeometryOSError(
                    f"{arg}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})"
                    + (f"; {skipped}" if skipped else "")
                )
            if skipped:
                warnings.warn(f"{arg}: {skipped}", SkippedFoldersWarning, stacklevel=2)
            paths.extend(found)
        elif any(ch in arg for ch in "*?[") and not path.is_file():  # "IMG [1].png" is a file, not a pattern
            matches = sorted(Path(p) for p in glob.glob(arg, recursive=True))
            found = [p for p in matches if p.is_file()]
            folders = [p for p in matches if p.is_dir()]
            if recursive:  # a matched folder gives its images, as a folder argument does
                found += [image for folder in folders for image in _folder_images(folder, True)[0]]
                folders = []
            skipped = _unsearched(folders, "matching folder(s)")
            if not found:
                raise GeometryOSError(f"{arg}: no file matches this pattern" + (f"; {skipped}" if skipped else ""))
            if skipped:
                warnings.warn(f"{arg}: {skipped}", SkippedFoldersWarning, stacklevel=2)
            paths.extend(found)
        else:
            if not path.exists():
                raise GeometryOSError(f"{arg}: no such file")
            paths.append(path)
    return paths


def preprocessing_config(model: Any) -> DatasetConfig:
    """Resize and normalise exactly as the model was trained (its config records size, mean, std)."""
    return DatasetConfig(**model.config.image_options())


@dataclass
class CaptionResult:
    """One image's caption: its path, the caption (None on error), the sum of its token log-probs, the
    length-penalised score beam search ranks by, or the one-line ``error`` that kept it from a caption."""

    image: str
    caption: str | None
    score: float | None = None  # sum of token log-probs
    penalised_score: float | None = None  # length-penalised, as beam search ranks
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (``caption`` always), JSON-serialisable."""
        return {k: v for k, v in self.__dict__.items() if v is not None or k == "caption"}


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def caption_images(
    model: Any,
    tokenizer: Any,
    paths: Sequence[Path],
    generation: GenerationConfig | None = None,
    batch_size: int = 16,
) -> Iterator[CaptionResult]:
    """Yield one result per image, in order; an unreadable image gives a result with ``error``."""
    import torch

    from .data import build_transform
    from .inference import generate_output, scored_caption

    config = preprocessing_config(model)
    transform = build_transform(config)
    generation = generation or GenerationConfig()
    device = model.device
    for batch in _batches(list(paths), batch_size):
        tensors: list[torch.Tensor] = []
        ok: list[int] = []
        results: list[CaptionResult] = []
        for path in batch:
            try:
                tensors.append(transform(load_image(str(path), config.max_image_pixels, draft_size=config.image_size)))
                ok.append(len(results))
                results.append(CaptionResult(str(path), None))
            except DataError as exc:
                results.append(CaptionResult(str(path), None, error=str(exc)))
        if tensors:
            out = generate_output(model, torch.stack(tensors).to(device), config=generation, tokenizer=tokenizer)
            per_image = generation.num_return_sequences
            for slot, i in enumerate(ok):
                # the best of this image's returned sequences
                results[i].caption, results[i].score, results[i].penalised_score = scored_caption(out, slot * per_image)
        yield from results


def evaluate_dataset(
    model: Any,
    tokenizer: Any,
    references: Sequence[tuple[str, list[str]]],
    generation: GenerationConfig | None = None,
    batch_size: int = 16,
    idf_corpus: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Caption every image once and score against its references; adds seconds per image.

    Raises DataError when an image cannot be read (a score over fewer images would mislead)."""
    from .metrics import caption_metrics

    paths = [Path(image) for image, _ in references]
    start = time.perf_counter()
    results = list(caption_images(model, tokenizer, paths, generation, batch_size))
    elapsed = time.perf_counter() - start
    bad = [r for r in results if r.error]
    if bad:
        raise DataError(f"{len(bad)} image(s) could not be read, first: {bad[0].error}")
    metrics: dict[str, Any] = caption_metrics(
        [r.caption or "" for r in results], [refs for _, refs in references], idf_corpus
    )
    metrics["seconds_per_image"] = elapsed / max(len(results), 1)
    metrics["examples"] = [
        {"image": r.image, "prediction": r.caption, "references": refs}
        for r, (_, refs) in zip(results[:5], references[:5])
    ]
    return metrics
