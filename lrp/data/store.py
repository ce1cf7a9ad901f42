"""The on-disk store of dataset-scale results: chunks addressed by dataset index.

Layout of a store directory::

    STORE/
      manifest.json           what the store holds (written atomically)
      chunks/000000/NAME.npy  chunk 0: dataset indices [0, chunk_size)
      chunks/000001/NAME.npy  chunk 1: [chunk_size, 2 * chunk_size), ...
      ...                     (plus kind-specific files, e.g. references.npz)

``manifest.json`` holds ``format``, ``kind`` (``"attribution"`` or ``"references"``),
``size`` (samples), ``chunk_size``, ``key`` with its parts ``model`` (a hash of the
model's parameters and buffers), ``data`` (a hash of the samples and labels, or the
user's ``data_key``) and ``settings`` (method, rules, target, ...), and ``complete``.

A chunk is a directory of ``.npy`` files (numpy's format: ``np.load(...,
mmap_mode="r")`` maps them); for attributions row ``i`` of ``chunks/c/NAME.npy`` is
dataset index ``c * chunk_size + i``.  A chunk is written into a hidden temporary
directory and renamed into place when all of it is on disk: a chunk directory that
exists is complete (the rename is its completion mark), and whatever a killed run
left behind in temporary directories is removed and recomputed.  One file per chunk
means that two ranks (on two machines sharing a file system) never write to the
same file.

A store is keyed like the cache of :func:`lrp.crp.collect_references`: a hash of
the settings, the model's parameters and the data.  Opening a store with another
key is refused with a :class:`StoreMismatch` naming what differs (model weights,
rules, settings or data).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .distributed import Group

FORMAT = 1
MANIFEST = "manifest.json"
CHUNKS = "chunks"


class StoreMismatch(ValueError):
    """A store written with other model weights, rules, settings or data."""


def hash_model(model: nn.Module, h) -> None:
    """Feed the model's parameters and buffers (names, dtypes, shapes, bytes) to ``h``."""
    for name, t in list(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_digest(model: nn.Module) -> str:
    """A hash of the model's parameters and buffers."""
    h = hashlib.sha256()
    hash_model(model, h)
    return h.hexdigest()


@dataclass(frozen=True)
class Key:
    """What a store's results depend on, and the hash of it.

    Attributes
    ----------
    settings
        JSON-serialisable settings (method, rules, target, layers, ...).
    model
        :func:`model_digest` of the model.
    data
        A hash of the data (see :func:`lrp.data.source.data_digest`) or ``"key:" +``
        the user's ``data_key``.
    """

    settings: Mapping[str, Any]
    model: str
    data: str

    @property
    def value(self) -> str:
        """The key: 20 hex digits of a hash of all three parts."""
        h = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode())
        h.update(self.model.encode())
        h.update(self.data.encode())
        return h.hexdigest()[:20]

    def differences(self, manifest: Mapping[str, Any]) -> list[str]:
        """What differs from the key recorded in ``manifest``."""
        parts = []
        if manifest.get("model") != self.model:
            parts.append("model weights")
        old = manifest.get("settings") or {}
        changed = sorted(k for k in set(old) | set(self.settings)
                         if json.dumps(old.get(k), sort_keys=True)
                         != json.dumps(self.settings.get(k), sort_keys=True))
        for k in changed:
            was, now = _short(old.get(k)), _short(self.settings.get(k))
            parts.append(f"{k} (was {was}, now {now})" if len(was + now) < 80 else k)
        if manifest.get("data") != self.data:
            parts.append("data")
        return parts


def _short(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Store:
    """A store directory (see the module docstring for the layout).

    Use :meth:`prepare` to create or reopen one for writing, :meth:`open` to read.
    """

    def __init__(self, path: str | Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | Path, kind: Optional[str] = None) -> Store:
        """Open an existing store (for reading); ``kind`` checks what it holds."""
        path = Path(path)
        file = path / MANIFEST
        if not file.is_file():
            raise FileNotFoundError(f"{path} is not an lrp store (no {MANIFEST})")
        with open(file) as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown store format {manifest.get('format')!r}")
        if kind is not None and manifest.get("kind") != kind:
            raise ValueError(f"{path} holds {manifest.get('kind')}, not {kind}")
        return cls(path, manifest)

    @classmethod
    def prepare(cls, path: str | Path, kind: str, key: Key, size: int, chunk_size: int,
                group: Group, overwrite: bool = False) -> Store:
        """Create the store at ``path``, or reopen the one there to resume it.

        Collective: every rank calls it.  Rank 0 checks and writes; a store with
        another key raises :class:`StoreMismatch` on every rank (``overwrite``
        deletes it instead).  Temporary directories of a killed run are removed.
        A reopened store keeps its own ``chunk_size``.
        """
        path = Path(path)
        error: Optional[BaseException] = None
        if group.rank == 0:
            try:
                cls._prepare_on_rank0(path, kind, key, size, chunk_size, overwrite)
            except Exception as err:  # reported to every rank by check()
                error = err
        group.check(error, f"opening the store {path}")
        store = cls.open(path, kind)
        return store

    @classmethod
    def _prepare_on_rank0(cls, path: Path, kind: str, key: Key, size: int, chunk_size: int,
                          overwrite: bool) -> None:
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory")
        file = path / MANIFEST
        if file.is_file():
            old = cls.open(path).manifest
            if old.get("kind") != kind:
                raise StoreMismatch(f"{path} holds {old.get('kind')}, not {kind}; use another "
                                    "directory")
            if old.get("key") != key.value:
                if not overwrite:
                    what = key.differences(old) or ["settings"]
                    raise StoreMismatch(f"{path} was written with other {'; '.join(what)}; "
                                        "use another directory, or overwrite it (overwrite=True, "
                                        "--overwrite)")
                shutil.rmtree(path)
            else:
                for tmp in (path / CHUNKS).glob(".*"):  # left by a killed run
                    shutil.rmtree(tmp, ignore_errors=True)
                return
        elif path.is_dir() and any(path.iterdir()):
            raise FileExistsError(f"{path} is a non-empty directory but not an lrp store; "
                                  "use a new or empty directory")
        (path / CHUNKS).mkdir(parents=True, exist_ok=True)
        from .. import __version__
        write_json(file, {"format": FORMAT, "kind": kind, "key": key.value, "model": key.model,
                          "data": key.data, "settings": dict(key.settings), "size": int(size),
                          "chunk_size": int(chunk_size), "complete": False,
                          "lrp": __version__})

    # ----------------------------------------------------------------- layout
    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self.manifest["size"])

    @property
    def chunk_size(self) -> int:
        return int(self.manifest["chunk_size"])

    @property
    def n_chunks(self) -> int:
        return -(-self.size // self.chunk_size)

    @property
    def complete(self) -> bool:
        """Whether every chunk was written and the run finished."""
        return bool(self.manifest.get("complete"))

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        """Dataset indices ``[start, stop)`` of a chunk."""
        start = chunk * self.chunk_size
        return start, min(self.size, start + self.chunk_size)

    def _chunk_dir(self, chunk: int) -> Path:
        return self.path / CHUNKS / f"{chunk:06d}"

    def done(self) -> list[int]:
        """The chunks on disk (complete ones only)."""
        found = []
        for p in (self.path / CHUNKS).iterdir() if (self.path / CHUNKS).is_dir() else ():
            if p.is_dir() and p.name.isdigit() and int(p.name) < self.n_chunks:
                found.append(int(p.name))
        return sorted(found)

    def missing(self) -> list[int]:
        """The chunks still to compute."""
        have = set(self.done())
        return [c for c in range(self.n_chunks) if c not in have]

    def finish(self, **extra: Any) -> None:
        """Mark the store complete (rank 0; every chunk must be on disk)."""
        missing = self.missing()
        if missing:
            raise RuntimeError(f"{self.path}: chunks {missing[:5]} are missing")
        self.manifest.update(extra, complete=True)
        write_json(self.path / MANIFEST, self.manifest)

    # ----------------------------------------------------------------- chunks
    def writer(self, chunk: int, rank: int) -> ChunkWriter:
        """A writer for one chunk (committed by :meth:`ChunkWriter.commit`)."""
        return ChunkWriter(self, chunk, rank)

    def read(self, chunk: int, name: str, mmap: bool = True) -> np.ndarray:
        """Array ``name`` of a complete chunk (memory-mapped by default)."""
        cached = self._maps.get((chunk, name))
        if cached is not None:
            return cached
        file = self._chunk_dir(chunk) / f"{name}.npy"
        if not file.is_file():
            if not self._chunk_dir(chunk).is_dir():
                raise KeyError(f"{self.path}: chunk {chunk} has not been written (the run is "
                               "incomplete: resume it)")
            raise KeyError(f"{self.path}: no array {name!r}")
        array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        if mmap:
            self._maps[(chunk, name)] = array
        return array

    def names(self) -> list[str]:
        """Names of the arrays of the first complete chunk."""
        done = self.done()
        if not done:
            return []
        return sorted(p.stem for p in self._chunk_dir(done[0]).glob("*.npy"))

    def array(self, name: str) -> ChunkedArray:
        """Per-sample array ``name`` across all chunks, indexed by dataset index."""
        return ChunkedArray(self, name)


class ChunkWriter:
    """Writes one chunk into a temporary directory; :meth:`commit` renames it into place."""

    def __init__(self, store: Store, chunk: int, rank: int):
        self.store = store
        self.chunk = chunk
        self.start, self.stop = store.chunk_range(chunk)
        self.tmp = store.path / CHUNKS / f".{chunk:06d}.tmp-{rank}-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self._rows: dict[str, np.memmap] = {}
        self._filled: dict[str, int] = {}

    def rows(self, name: str, start: int, values: np.ndarray) -> None:
        """Write per-sample ``values`` for dataset indices ``start, start + 1, ...``."""
        values = np.ascontiguousarray(values)
        if name not in self._rows:
            shape = (self.stop - self.start,) + values.shape[1:]
            self._rows[name] = np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+",
                                                         dtype=values.dtype, shape=shape)
            self._filled[name] = 0
        target = self._rows[name]
        if values.shape[1:] != target.shape[1:]:
            raise ValueError(f"{name}: rows of shape {values.shape[1:]} do not match "
                             f"{target.shape[1:]}")
        a = start - self.start
        target[a:a + values.shape[0]] = values
        self._filled[name] += values.shape[0]

    def save(self, name: str, values: np.ndarray) -> None:
        """Write a whole array (not per sample) into the chunk."""
        np.save(self.tmp / f"{name}.npy", np.ascontiguousarray(values), allow_pickle=False)

    def commit(self) -> None:
        """Flush everything to disk and rename the chunk into place (its completion mark)."""
        for name, target in self._rows.items():
            if self._filled[name] != target.shape[0]:
                raise RuntimeError(f"chunk {self.chunk}: {self._filled[name]} of "
                                   f"{target.shape[0]} rows of {name!r} written")
            target.flush()
        self._rows.clear()
        for file in self.tmp.iterdir():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(self.tmp, self.store._chunk_dir(self.chunk))

    def discard(self) -> None:
        """Remove the temporary directory (after an error)."""
        self._rows.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


class ChunkedArray:
    """A per-sample array of a store, read by dataset index (``a[i]``, ``a[i:j]``,
    ``a[[i, j]]``) from the memory-mapped chunk files."""

    def __init__(self, store: Store, name: str):
        self.store = store
        self.name = name
        done = store.done()
        if not done:
            raise KeyError(f"{store.path}: no chunk has been written")
        first = store.read(done[0], name)
        self.dtype = first.dtype
        self.shape = (store.size,) + first.shape[1:]

    def __len__(self) -> int:
        return self.shape[0]

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first dataset index, rows)`` of every chunk, in order."""
        for c in range(self.store.n_chunks):
            yield self.store.chunk_range(c)[0], self.store.read(c, self.name)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.shape[0] if index < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"index {index} out of range for {self.shape[0]} samples")
            c, r = divmod(i, self.store.chunk_size)
            return np.array(self.store.read(c, self.name)[r])
        idx = np.arange(self.shape[0])[index]
        out = np.empty((len(idx),) + self.shape[1:], self.dtype)
        chunk = idx // self.store.chunk_size
        for c in np.unique(chunk):
            sel = chunk == c
            out[sel] = self.store.read(int(c), self.name)[idx[sel] - c * self.store.chunk_size]
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)
