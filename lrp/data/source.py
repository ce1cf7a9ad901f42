"""The data of a dataset-scale job: a map-style dataset and how to load it in batches.

A :class:`Source` wraps a ``torch.utils.data.Dataset`` (items are inputs or
``(input, label)`` pairs) or a non-shuffling ``DataLoader`` (whose dataset,
``batch_size``, ``num_workers``, ``collate_fn``, ... it takes over).  Batches are
cut from ranges of dataset indices, so a chunk of the dataset is batched the same
way whichever rank computes it and whether or not the run was resumed: results do
not depend on the number of processes.

:func:`data_digest` hashes the data sample by sample (inputs and labels: dtype,
shape, bytes) in fixed blocks spread over the ranks, so the hash is the same for any
batch size and any number of processes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler
from tqdm.auto import tqdm

from ..batching import positive_int, show_progress
from .distributed import Group, shard

#: Samples per block of the data hash (independent of batch size and process count).
HASH_BLOCK = 1024

_LOADER_OPTIONS = ("collate_fn", "pin_memory", "timeout", "worker_init_fn",
                   "multiprocessing_context", "prefetch_factor", "persistent_workers")


def split_batch(batch) -> tuple[Tensor, Optional[Tensor]]:
    """``(inputs, labels)`` of a dataset sample or loader batch (labels may be missing)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        label = batch[1] if len(batch) > 1 else None
        return batch[0], torch.as_tensor(label) if label is not None else None
    raise TypeError("expected batches of tensors or (inputs, labels) pairs, got "
                    f"{type(batch).__name__}")


@dataclass
class Source:
    """A map-style dataset with its batching options.

    Attributes
    ----------
    dataset
        The dataset (``len`` and integer indexing).
    batch_size
        Samples per batch.
    workers
        DataLoader worker processes (0: load in the main process).
    options
        Further ``DataLoader`` arguments (``collate_fn``, ``pin_memory``, ...).
    """

    dataset: Any
    batch_size: int = 64
    workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, data, batch_size: Optional[int] = None, workers: Optional[int] = None) -> Source:
        """A source from a dataset, or from a DataLoader that does not shuffle
        (``batch_size`` / ``workers`` override the loader's)."""
        if isinstance(data, DataLoader):
            if not isinstance(data.sampler, SequentialSampler) or data.batch_size is None:
                raise TypeError("the DataLoader must not shuffle or use its own sampler "
                                "(results are stored by dataset index, and lrp shards the "
                                "data itself): use shuffle=False, the default sampler and a "
                                "batch_size")
            options = {k: getattr(data, k) for k in _LOADER_OPTIONS if hasattr(data, k)}
            source = cls(data.dataset, data.batch_size if batch_size is None else batch_size,
                         data.num_workers if workers is None else workers, options)
        else:
            source = cls(data, 64 if batch_size is None else batch_size,
                         0 if workers is None else workers)
        if isinstance(source.dataset, IterableDataset) or not hasattr(source.dataset, "__len__") \
                or not hasattr(source.dataset, "__getitem__"):
            raise TypeError("need a map-style dataset (len() and indexing): results are "
                            f"stored by dataset index, got {type(source.dataset).__name__}")
        positive_int(source.batch_size, "batch_size")
        if isinstance(source.workers, bool) or not isinstance(source.workers, int) \
                or source.workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {source.workers!r}")
        if len(source.dataset) == 0:
            raise ValueError("the dataset is empty")
        return source

    def __len__(self) -> int:
        return len(self.dataset)

    def cut(self, start: int, stop: int) -> list[list[int]]:
        """The batches of dataset indices ``[start, stop)``."""
        return [list(range(a, min(stop, a + self.batch_size)))
                for a in range(start, stop, self.batch_size)]

    def loader(self, batches: list[list[int]], workers: Optional[int] = None) -> DataLoader:
        """A DataLoader yielding exactly ``batches`` (lists of dataset indices), in order."""
        workers = self.workers if workers is None else workers
        options = dict(self.options)
        if workers == 0:
            for k in ("prefetch_factor", "persistent_workers", "worker_init_fn",
                      "multiprocessing_context"):
                options.pop(k, None)
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=workers, **options)

    def first(self) -> tuple[Tensor, Optional[Tensor]]:
        """Sample 0 as a batch of one (loaded in this process)."""
        return split_batch(next(iter(self.loader([[0]], workers=0))))


def sample_bytes(h, x: Tensor) -> None:
    """Feed one sample (dtype, shape, bytes) to the hash ``h``."""
    x = x.detach().cpu().contiguous()
    h.update(f"{x.dtype}:{tuple(x.shape)}".encode())
    h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())


def data_digest(source: Source, group: Group, progress: Optional[bool] = None) -> str:
    """A hash of every sample and label, in index order (collective).

    Blocks of :data:`HASH_BLOCK` samples are hashed on the ranks round-robin (one
    pass over each rank's part of the data, without the model); the ranks exchange
    the block hashes.
    """
    n = len(source)
    blocks = list(range(-(-n // HASH_BLOCK)))
    mine = shard(blocks, group.rank, group.world)
    plan = [(b, batch) for b in mine
            for batch in source.cut(b * HASH_BLOCK, min(n, (b + 1) * HASH_BLOCK))]
    digests: dict[int, str] = {}
    error: Optional[BaseException] = None
    try:
        hashes = {b: hashlib.sha256() for b in mine}
        disable = group.rank != 0 or not show_progress(progress, len(plan))
        with tqdm(total=sum(len(batch) for _, batch in plan), desc="hashing the data",
                  unit="sample", disable=disable) as bar:
            for (b, _), batch in zip(plan, _iterate(source, [batch for _, batch in plan])):
                x, y = split_batch(batch)
                for i in range(x.shape[0]):
                    sample_bytes(hashes[b], x[i])
                    if y is not None:
                        sample_bytes(hashes[b], y[i])
                bar.update(x.shape[0])
        digests = {b: h.hexdigest() for b, h in hashes.items()}
    except Exception as err:  # reported to every rank by check()
        error = err
    group.check(error, "hashing the data")
    merged: dict[int, str] = {}
    for part in group.all_gather(digests):
        merged.update(part)
    h = hashlib.sha256(f"samples:{n}".encode())
    for b in blocks:
        h.update(merged[b].encode())
    return h.hexdigest()


def _iterate(source: Source, batches: list[list[int]]) -> Iterator[Any]:
    if not batches:
        return iter(())
    return iter(source.loader(batches))
