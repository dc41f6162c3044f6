"""WebDataset tar shards streamed without unpacking (``webdataset`` library): ``ShardStream``.

A shard is a tar file of samples: members with one stem (``000017.jpg``, ``000017.txt``) form a sample, as
WebDataset defines it. Images: ``jpg``/``jpeg``/``png``/``webp``; captions: ``txt`` (each non-empty line a
caption) or ``json`` (``{"caption": str}`` or ``{"captions": [str, ...]}``). Each caption is one item.

Splitting, so that every sample is seen exactly once per epoch: the shard list (brace-expanded,
``data/{000000..000007}.tar``) is shuffled by (seed, epoch), then shard i goes to process
``i % world_size`` (DDP rank, from ``torch.distributed``) and, within it, to DataLoader worker
``(i // world_size) % num_workers``. Each worker reads its shards in order through a shuffle buffer of
``shuffle_buffer`` samples seeded by (seed, epoch, rank, worker), so memory holds at most that many decoded
samples whatever the data set's size. With fewer shards than processes x workers some get none; with a
number of shards that does not divide evenly, processes see different numbers of samples (give DDP a
shard count divisible by processes x workers).

Resume guarantee: the order of an epoch is a function of (seed, epoch, shards, world size, workers) only,
so a run resumed at batch k of an epoch sees exactly the batches from k on (the trainer replays the
stream and drops the first k batches: exact, at the cost of reading them again). Changing the shard list,
the number of processes or of workers changes the order; then the rest of the epoch is not the rest of
the interrupted one.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset

from geometry_os.systems.pixel_llm.plugin_api import (
    DataError,
    DatasetConfig,
    build_transform,
    resolve_tokenizer,
    to_rgb,
    truncate,
)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TEXT_KEYS = ("txt", "json")


def _webdataset() -> None:
    try:
        import webdataset  # noqa: F401
    except ImportError:
        raise DataError(
            "WebDataset shards need the webdataset package: pip install 'geometry-os[webdataset]'"
        ) from None


def expand_shards(pattern: str) -> list[str]:
    """``data/{000000..000003}.tar`` -> the four paths (WebDataset's brace expansion); ``::`` separates lists.
    Raises ``DataError`` when a shard does not exist or the webdataset package is missing."""
    _webdataset()
    from webdataset.shardlists import expand_urls

    shards = list(expand_urls(pattern))
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{pattern}: shard {missing[0]} not found{more}")
    return shards


def sample_captions(sample: dict[str, Any]) -> list[str]:
    """The captions of one WebDataset sample (raises ``ValueError`` with the reason)."""
    if "txt" in sample:
        captions = [line.strip() for line in sample["txt"].decode("utf-8").splitlines() if line.strip()]
    elif "json" in sample:
        data = json.loads(sample["json"])
        value = data.get("captions", data.get("caption")) if isinstance(data, dict) else None
        captions = value if isinstance(value, list) else [value]
        captions = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    else:
        raise ValueError(f"no caption member ({', '.join(TEXT_KEYS)})")
    if not captions:
        raise ValueError("empty caption")
    return captions


def sample_image(sample: dict[str, Any]):
    """The RGB image of a shard sample (its first ``IMAGE_KEYS`` member); ``ValueError`` when it has none,
    Pillow's errors when it does not decode."""
    from PIL import Image

    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise ValueError(f"no image member ({', '.join(IMAGE_KEYS)})")
    image = Image.open(io.BytesIO(sample[key]))
    image.load()
    return to_rgb(image)


def raw_samples(shards: list[str]) -> Iterator[dict[str, Any]]:
    """Samples of ``shards`` in order, streamed from each tar (WebDataset's tar reader, no unpacking)."""
    from webdataset.tariterators import tarfile_to_samples

    return tarfile_to_samples()(iter([{"url": s} for s in shards]))


class ShardStream(IterableDataset):
    """WebDataset shards as training items (the keys ``ImageTextDataset`` items have). See the module
    docstring for splitting, shuffling and the resume guarantee. ``limit``: stop after this many samples
    (per consumer). ``tokenizer`` None: the ``simple`` vocabulary trained on the captions of the first
    ``vocab_samples`` samples."""

    def __init__(
        self,
        pattern: str,
        tokenizer: Any = None,
        config: DatasetConfig | None = None,
        *,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        limit: int | None = None,
        vocab_samples: int = 10000,
    ):
        self.pattern, self.config = pattern, config or DatasetConfig()
        self.shards = expand_shards(pattern)
        self.shuffle_buffer, self.seed, self.limit = shuffle_buffer, seed, limit
        self.epoch = 0
        captions = None
        if tokenizer is None:
            captions = [c for s in _limited(raw_samples(self.shards), vocab_samples) for c in sample_captions(s)]
        self.tokenizer, self._encode = resolve_tokenizer(tokenizer, captions or [])
        self.transform = build_transform(self.config)

    splits_across_processes = True  # each DDP rank reads its own shards (the trainer need not split)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order to produce (the trainer calls it at each epoch's start)."""
        self.epoch = epoch

    def assignment(self, rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
        """The shards one (rank, worker) reads this epoch."""
        order = list(self.shards)
        random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        mine = order[rank::world_size]
        return mine[worker::num_workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from webdataset.filters import shuffle

        rank, world_size = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.assignment(rank, world_size, worker, workers)
        rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{worker}")
        samples = raw_samples(shards)
        if self.shuffle_buffer > 1:
            samples = shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
        for sample in _limited(samples, self.limit):
            label = f"{sample.get('__url__', self.pattern)}: {sample.get('__key__')}"
            try:
                image = self.transform(sample_image(sample))
                captions = sample_captions(sample)
            except (ValueError, OSError) as exc:
                if self.config.on_error == "raise":
                    raise DataError(f"{label}: {' '.join(str(exc).split())}") from None
                continue
            for caption in captions:
                ids = truncate([int(i) for i in self._encode(caption)], self.config.max_length)
                yield {
                    "image": image,
                    "input_ids": torch.tensor(ids, dtype=torch.long),
                    "caption": caption,
                    "image_path": label,
                    "index": -1,
                }


def _limited(samples: Iterator[dict[str, Any]], limit: int | None) -> Iterator[dict[str, Any]]:
    for n, sample in enumerate(samples):
        if limit is not None and n >= limit:
            return
        yield sample
