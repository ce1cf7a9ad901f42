"""The ranks of a job: one process by default, or an initialised ``torch.distributed`` group.

Dataset-scale work (:func:`lrp.data.attribute_dataset`,
:func:`lrp.crp.collect_references`) runs unchanged in one process and under
``torchrun``: :meth:`Group.current` reads the rank and world size from the default
process group when one is initialised (gloo on the CPU, NCCL on GPUs, one or several
machines), else it is a group of one.  No networking of our own: every exchange is
a collective of torch's process group.

Work is split into chunks of the dataset; :func:`shard` deals them out round-robin,
so any dataset size and any number of ranks work (ranks without a chunk simply wait
at the checkpoints).  After every chunk the ranks meet at :meth:`Group.check`: an
all-reduce of an error flag, so that when one rank fails the others stop there with
a :class:`RankError` naming it instead of waiting forever at the next collective.
"""
from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

import torch

from ..models import first_line

T = TypeVar("T")


class RankError(RuntimeError):
    """Another rank of the job failed, or the ranks lost contact."""


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s part of ``items``: every ``world``-th item from ``rank`` on.

    Round-robin over ordered chunks keeps the parts within one item of each other for
    any length (a rank gets nothing when there are fewer items than ranks) and is the
    same on every rank without communication.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for world size {world}")
    return list(items[rank::world])


@dataclass
class Group:
    """Rank and world size of the running job, and the collectives it needs.

    Attributes
    ----------
    rank, world
        This process's rank and the number of processes (0 and 1 without a
        process group).
    """

    rank: int = 0
    world: int = 1
    _dist: Any = None

    @classmethod
    def current(cls) -> Group:
        """The default ``torch.distributed`` process group if one is initialised, else
        a group of one process."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), dist)
        return cls()

    @property
    def device(self) -> torch.device:
        """Where tensors for collectives live (the current CUDA device for NCCL)."""
        if self._dist is not None and self._dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _collective(self, what: str, fn, *args):
        try:
            return fn(*args)
        except RuntimeError as err:
            raise RankError(f"lost contact with the other ranks during {what} "
                            f"(did a rank die?): {first_line(err)}") from err

    def all_gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (picklable objects)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        self._collective("all_gather", self._dist.all_gather_object, out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        self._collective("broadcast", self._dist.broadcast_object_list, box, 0)
        return box[0]

    def check(self, error: Optional[BaseException], what: str = "the job") -> None:
        """Meet the other ranks; raise if any rank failed.

        Every rank calls this at the same points.  A rank passes the exception it
        caught (or ``None``); when any rank failed, the failing rank re-raises its
        own exception and the others raise :class:`RankError` with its message.
        """
        if self.world == 1:
            if error is not None:
                raise error
            return
        flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=self.device)
        self._collective("a checkpoint", self._dist.all_reduce, flag)
        if int(flag.item()) == 0:
            return
        message = None if error is None else f"{type(error).__name__}: {first_line(error)}"
        messages = self.all_gather(message)
        if error is not None:
            raise error
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        names = "; ".join(f"rank {r} failed: {m}" for r, m in failed)
        raise RankError(f"{what} stopped because {names}")

    def agree(self, value: Any, what: str) -> None:
        """Raise on every rank unless ``value`` (picklable) is the same on all ranks."""
        values = self.all_gather(value)
        if any(pickle.dumps(v) != pickle.dumps(values[0]) for v in values[1:]):
            differ = [r for r, v in enumerate(values) if pickle.dumps(v) != pickle.dumps(values[0])]
            raise RankError(f"the ranks disagree on {what} (rank 0 differs from rank(s) "
                            f"{', '.join(map(str, differ))})")
