"""The resumable, sharded loop over a dataset that every dataset-scale job runs.

1. :func:`make_key`: the store key from the settings, the model's parameters and the
   data (the ranks check that they agree on all three).
2. :meth:`lrp.data.store.Store.prepare`: create the store or reopen it to resume.
3. :func:`run_chunks`: rank 0 lists the chunks still missing and broadcasts the
   list; the ranks take them round-robin (:func:`lrp.data.distributed.shard`) and
   compute them batch by batch; each finished chunk is committed to the store (a
   checkpoint), then the ranks meet at :meth:`~lrp.data.distributed.Group.check`,
   where a failure on any rank stops all of them.

Without a store (:class:`Layout`), the same loop runs with nothing written.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Optional

from torch import Tensor, nn
from tqdm.auto import tqdm

from ..batching import show_progress
from .distributed import Group, shard
from .source import Source, _iterate, data_digest, split_batch
from .store import Key, Store, model_digest

#: ``process(writer, start, x, y)``: one batch (dataset indices ``start, ...``).
Process = Callable[[Any, int, Tensor, Optional[Tensor]], None]


def make_key(settings: Mapping[str, Any], model: nn.Module, source: Source, group: Group, *,
             data_key: Optional[str] = None, progress: Optional[bool] = None) -> Key:
    """The key of a job (collective): settings, model hash and data hash, checked to be
    the same on every rank."""
    group.agree(dict(settings), "the settings")
    digest = model_digest(model)
    group.agree(digest, "the model weights")
    if data_key is not None:
        if not isinstance(data_key, str):
            raise TypeError(f"data_key must be a string, got {data_key!r}")
        group.agree(data_key, "data_key")
        data = "key:" + data_key
    else:
        data = data_digest(source, group, progress)
    return Key(dict(settings), digest, data)


class Layout:
    """Chunks of a dataset without a store: nothing is written or resumed."""

    def __init__(self, size: int, chunk_size: int):
        self._size, self._chunk_size = size, chunk_size

    @property
    def size(self) -> int:
        return self._size

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @property
    def n_chunks(self) -> int:
        return -(-self.size // self.chunk_size)

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(self.size, start + self.chunk_size)

    def missing(self) -> list[int]:
        return list(range(self.n_chunks))

    def done(self) -> list[int]:
        return []

    def writer(self, chunk: int, rank: int) -> _Discard:
        return _Discard(chunk)


class _Discard:
    """A chunk writer that keeps nothing."""

    def __init__(self, chunk: int):
        self.chunk = chunk

    def rows(self, name, start, values) -> None:
        pass

    def save(self, name, values) -> None:
        pass

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        pass


def run_chunks(store: Store | Layout, source: Source, group: Group, process: Process, *,
               finish: Optional[Callable[[Any], None]] = None, progress: Optional[bool] = None,
               desc: str = "samples") -> int:
    """Compute the store's missing chunks on the ranks (collective).

    ``process(writer, start, x, y)`` runs on every batch of a chunk (inputs ``x``,
    labels ``y`` or ``None``), ``finish(writer)`` after its last batch; then the
    chunk is committed.  Returns the number of samples computed on all ranks.
    """
    todo = group.broadcast(store.missing() if group.rank == 0 else None)
    mine = shard(todo, group.rank, group.world)
    rounds = math.ceil(len(todo) / group.world)
    plan = [(c, batch) for c in mine for batch in source.cut(*store.chunk_range(c))]
    total = sum(len(batch) for _, batch in plan)
    label = desc if group.world == 1 else f"{desc} (rank 0 of {group.world})"
    bar = tqdm(total=total, desc=label, unit="sample", smoothing=0.1,
               disable=group.rank != 0 or not show_progress(progress, len(plan)))
    batches = _iterate(source, [batch for _, batch in plan])
    pos = 0
    try:
        for r in range(rounds):
            error: Optional[BaseException] = None
            if r < len(mine):
                chunk, writer = mine[r], None
                try:
                    writer = store.writer(chunk, group.rank)
                    while pos < len(plan) and plan[pos][0] == chunk:
                        x, y = split_batch(next(batches))
                        process(writer, plan[pos][1][0], x, y)
                        bar.update(x.shape[0])
                        pos += 1
                    if finish is not None:
                        finish(writer)
                    writer.commit()
                except Exception as err:  # reported to every rank by check()
                    error = err
                    if writer is not None:
                        writer.discard()
            group.check(error, f"the run ({desc})")
    finally:
        bar.close()
        del batches
    return sum(group.all_gather(total))
