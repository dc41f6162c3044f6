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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from geometry_os.errors import GeometryOSError

from .data_config import DatasetConfig
from .generation_config import GenerationConfig
from .images import DataError, load_image

T = TypeVar("T")
R = TypeVar("R")

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
    length-penalised score beam search ranks by, with ``rerank`` the score the candidates were re-ordered
    by, or the one-line ``error`` that kept it from a caption."""

    image: str
    caption: str | None
    score: float | None = None  # sum of token log-probs
    penalised_score: float | None = None  # length-penalised, as beam search ranks
    error: str | None = None
    rerank_score: float | None = None  # GenerationConfig.rerank's score (nats)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (``caption`` always), JSON-serialisable."""
        return {k: v for k, v in self.__dict__.items() if v is not None or k == "caption"}


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity: taskset, container cpusets), else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_threads(device: Any = "cpu", compute_threads: int | None = None) -> int:
    """Threads free to read and preprocess image files while the model works on ``device``: the usable
    CPUs that the compute threads (``compute_threads``, default torch's) leave idle, all of them for a
    GPU, at most 8. On a CPU whose cores the model already uses, reading ahead slows captioning down
    (measured: 10 % on 2 cores), so this can be 0. On a CPU with two hardware threads per core, torch
    uses one per core and the idle ones are the others."""
    cpus = usable_cpus()
    if str(device).split(":")[0] != "cpu":
        return min(8, cpus)
    if compute_threads is None:
        import torch

        compute_threads = torch.get_num_threads()
    return max(0, min(8, cpus - compute_threads))


def read_ahead(
    batches: Sequence[Sequence[T]], load: Callable[[T], R], threads: int = 1
) -> Iterator[tuple[Sequence[T], list[R]]]:
    """Yield ``(batch, [load(item) for item in batch])`` for each batch, in order, while ``threads``
    threads already load the next batch: reading and decoding files overlaps the model's work on this one
    (PIL decodes and resizes without holding the GIL), and at most two batches are loaded at a time.
    ``threads=0`` loads each batch when it is reached, in the caller's thread. An exception of ``load``
    is raised when its batch is reached.
    """
    if threads < 1:
        for batch in batches:
            yield batch, [load(item) for item in batch]
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="read-ahead")
    try:
        pending = [pool.submit(load, item) for item in batches[0]] if batches else []
        for k, batch in enumerate(batches):
            loaded = [future.result() for future in pending]
            pending = [pool.submit(load, item) for item in batches[k + 1]] if k + 1 < len(batches) else []
            yield batch, loaded
    finally:  # also when the caller stops early: reads not yet started are dropped, running ones finish
        pool.shutdown(wait=True, cancel_futures=True)


def caption_images(
    model: Any,
    tokenizer: Any,
    paths: Sequence[Path],
    generation: GenerationConfig | None = None,
    batch_size: int = 16,
    threads: int | None = None,
) -> Iterator[CaptionResult]:
    """Yield one result per image, in order; an unreadable image gives a result with ``error``.

    ``threads`` (default ``loader_threads(model.device)``) read and preprocess the next batch's files while
    the model captions this one (``read_ahead``; 0: one after the other).
    """
    import torch

    from .data import build_transform
    from .inference import generate_output, scored_caption

    config = preprocessing_config(model)
    transform = build_transform(config)
    generation = generation or GenerationConfig()
    device = model.device

    def load(path: Path) -> torch.Tensor | str:
        try:
            return transform(load_image(str(path), config.max_image_pixels, draft_size=config.image_size))
        except DataError as exc:
            return str(exc)

    batches = list(_batches(list(paths), batch_size))
    for batch, loaded in read_ahead(batches, load, loader_threads(device) if threads is None else threads):
        results = [
            CaptionResult(str(path), None, error=item if isinstance(item, str) else None)
            for path, item in zip(batch, loaded)
        ]
        images = [item for item in loaded if not isinstance(item, str)]
        if images:
            out = generate_output(model, torch.stack(images).to(device), config=generation, tokenizer=tokenizer)
            per_image = generation.num_return_sequences
            ok = [i for i, item in enumerate(loaded) if not isinstance(item, str)]
            for slot, i in enumerate(ok):  # the best of this image's returned sequences
                row = slot * per_image
                results[i].caption, results[i].score, results[i].penalised_score = scored_caption(out, row)
                if out.rerank_scores is not None:
                    results[i].rerank_score = float(out.rerank_scores[row])
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
