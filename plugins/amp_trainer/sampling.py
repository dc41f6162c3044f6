"""Data order that can be resumed exactly: it depends only on (seed, epoch), and an epoch can start at any batch.

``EpochBatchSampler`` shards the order across processes the way ``DistributedSampler`` does (rank r
takes every world_size-th index), so batch j of all ranks together is batch j of a single process
whose batch is world_size times larger. Resuming mid-epoch starts the sampler at the next batch,
so the skipped batches are never loaded.

A DataLoader the user built with the usual ``shuffle=True/False`` (a ``RandomSampler`` or
``SequentialSampler``) is rebuilt around this sampler; any other sampler is kept, and resuming then
skips the consumed batches by iterating them (exact only if that sampler is deterministic).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from .distributed import World


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct generator seed per (seed, epoch)."""
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of this process's share of a seeded permutation; ``set_epoch(epoch, start_batch)``.

    ``pad`` (training): the permutation is padded by repeating its start so that every process gets
    the same number of batches (collectives stay in step); without it (evaluation) shares may differ.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.seed, self.drop_last, self.pad = shuffle, seed, drop_last, pad
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_world(self, world: World) -> None:
        """Take this process's rank and the number of processes (DDP) from ``world``."""
        self.rank, self.world_size = world.rank, world.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate ``epoch``'s order from batch ``start_batch`` on (a resume skips without loading)."""
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> list[int]:
        """The whole epoch's index order (all processes), padded or trimmed to a multiple of world_size."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        if self.world_size > 1 and self.pad:
            if self.drop_last:
                order = order[: self.num_samples - self.num_samples % self.world_size]
            else:
                total = math.ceil(self.num_samples / self.world_size) * self.world_size
                order = (order * math.ceil(total / len(order)))[:total]
        return order

    def shard(self, epoch: int) -> list[int]:
        """This process's indices of ``epoch`` (every ``world_size``-th of ``order``, from ``rank``)."""
        return self.order(epoch)[self.rank :: self.world_size]

    @property
    def num_batches(self) -> int:
        """Batches per epoch for this process (the same on every process when padding)."""
        n, w = self.num_samples, self.world_size
        if w > 1 and self.pad:
            share = (n - n % w if self.drop_last else math.ceil(n / w) * w) // w
        else:
            share = len(range(self.rank, n, w))
        return share // self.batch_size if self.drop_last else math.ceil(share / self.batch_size)

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        share = self.shard(self.epoch)
        for j in range(self.start_batch, self.num_batches):
            yield share[j * self.batch_size : (j + 1) * self.batch_size]


def make_dataloader(
    dataset: Any,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    collate_fn: Any = None,
    pad_token_id: int = 0,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader whose order the trainer can resume exactly (see ``EpochBatchSampler``).

    ``batch_size`` is per process; ``collate_fn`` defaults to the caption collator.
    """
    if collate_fn is None:
        from geometry_os.systems.pixel_llm.plugin_api import CaptionCollator

        collate_fn = CaptionCollator(pad_token_id)
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=torch.Generator(),  # worker base seeds come from here, reseeded per epoch
        **kwargs,
    )


def _rebuild(loader: DataLoader, sampler: EpochBatchSampler) -> DataLoader:
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers}
    return DataLoader(
        loader.dataset,
        batch_sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=torch.Generator(),
        **extra,
    )


def _plain_order(loader: DataLoader) -> tuple[bool, bool] | None:
    """(shuffle, drop_last) when ``loader`` batches a plain random/sequential/distributed order."""
    batch_sampler = loader.batch_sampler
    if type(batch_sampler) is not BatchSampler:
        return None
    sampler = batch_sampler.sampler
    if type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None:
        return True, batch_sampler.drop_last
    if type(sampler) is SequentialSampler:
        return False, batch_sampler.drop_last
    if type(sampler) is DistributedSampler:
        return sampler.shuffle, batch_sampler.drop_last
    return None


def adapt_loader(
    loader: DataLoader, seed: int, world: World, *, training: bool = True
) -> tuple[DataLoader, EpochBatchSampler | None]:
    """The loader to iterate and its resumable sampler (None when the order is the loader's own)."""
    if isinstance(loader.batch_sampler, EpochBatchSampler):
        loader.batch_sampler.set_world(world)
        if training:
            loader.batch_sampler.seed = seed
        else:  # validation counts every sample once: no padding duplicates across processes
            loader.batch_sampler.pad = False
        return loader, loader.batch_sampler
    if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
        if world.enabled and training and not getattr(loader.dataset, "splits_across_processes", False):
            warnings.warn("an iterable dataset must shard itself across processes; the trainer cannot", stacklevel=3)
        return loader, None
    plain = _plain_order(loader)
    if plain is None:
        if training:
            warnings.warn(
                f"the training DataLoader uses its own {type(loader.batch_sampler).__name__}; exact resume "
                "needs a deterministic order (use trainer.make_dataloader or shuffle=True/False)",
                stacklevel=3,
            )
        return loader, None
    shuffle, drop_last = plain
    if not training:
        shuffle = False
    dataset: Any = loader.dataset  # map-style here: it has a length
    batches: Any = loader.batch_sampler  # a BatchSampler here (_plain_order recognised it)
    sampler = EpochBatchSampler(
        len(dataset),
        batches.batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        rank=world.rank,
        world_size=world.world_size,
        pad=training,
    )
    return _rebuild(loader, sampler), sampler
