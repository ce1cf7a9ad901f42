"""Reading a dataset attribution store: arrays by dataset index, per-class means."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .store import ChunkedArray, Store


@dataclass
class ClassMeans:
    """Mean relevance per class.

    Attributes
    ----------
    classes
        The class ids ``(K,)``, ascending.
    means
        ``(K, *relevance row)`` mean relevance of the samples of each class (float64).
    counts
        ``(K,)`` samples per class.
    """

    classes: np.ndarray
    means: np.ndarray
    counts: np.ndarray

    def __getitem__(self, cls: int) -> np.ndarray:
        """The mean relevance of class ``cls``."""
        where = np.flatnonzero(self.classes == cls)
        if len(where) == 0:
            raise KeyError(f"no samples of class {cls}; classes: {self.classes.tolist()}")
        return self.means[where[0]]


class AttributionStore:
    """A store written by :func:`lrp.data.attribute_dataset`, opened for reading.

    Arrays are read by dataset index from the memory-mapped chunk files::

        store = AttributionStore("attributions/")
        store.relevance[12]          # (C, H, W) relevance of sample 12
        store.target[:100]           # the explained classes of samples 0..99
        means = store.class_means()  # mean heatmap per label, straight from the store

    Parameters
    ----------
    path
        The store directory.
    computed
        Set by :func:`lrp.data.attribute_dataset`: samples explained by that call.
    """

    def __init__(self, path: str | Path, computed: Optional[int] = None):
        self.store = Store.open(path, "attribution")
        self.computed = computed

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{len(self.store.done())}/{self.store.n_chunks} chunks"
        return f"AttributionStore({str(self.path)!r}, {self.size} samples, {state})"

    def __len__(self) -> int:
        return self.size

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def size(self) -> int:
        """Number of samples."""
        return self.store.size

    @property
    def complete(self) -> bool:
        """Whether the run that writes the store finished."""
        return self.store.complete

    @property
    def settings(self) -> dict[str, Any]:
        """Method, rules, target, options, ... the store was written with."""
        return self.store.manifest["settings"]

    def _array(self, name: str) -> Optional[ChunkedArray]:
        return self.store.array(name) if name in self.store.names() else None

    @property
    def relevance(self) -> ChunkedArray:
        """``(N, *input)`` relevance (``(N, n_conditions, *input)`` for CRP)."""
        found = self._array("relevance")
        if found is None:
            raise KeyError(f"{self.path}: nothing written yet")
        return found

    @property
    def output(self) -> Optional[ChunkedArray]:
        """``(N, classes)`` model outputs."""
        return self._array("output")

    @property
    def target(self) -> Optional[ChunkedArray]:
        """``(N,)`` explained classes (``(N, n_conditions)`` for CRP)."""
        return self._array("target")

    @property
    def label(self) -> Optional[ChunkedArray]:
        """``(N,)`` dataset labels, or ``None`` for a dataset without labels."""
        return self._array("label")

    @property
    def convergence(self) -> Optional[ChunkedArray]:
        """Per-sample decomposition error, for methods that have one (else ``None``)."""
        return self._array("convergence")

    def class_means(self, by: str = "label") -> ClassMeans:
        """Mean relevance of each class, one pass over the chunks (float64 sums).

        Parameters
        ----------
        by
            ``"label"`` (the dataset's labels) or ``"target"`` (the explained class).
        """
        if not self.complete:
            raise ValueError(f"{self.path} is incomplete: resume attribute_dataset first")
        if by not in ("label", "target"):
            raise ValueError(f"by must be 'label' or 'target', got {by!r}")
        groups = self.label if by == "label" else self.target
        if groups is None:
            raise ValueError(f"{self.path} has no {by}s" + (" (the dataset had no labels)"
                                                            if by == "label" else ""))
        if len(groups.shape) != 1:
            raise ValueError(f"several targets per sample: group by 'label' ({groups.shape})")
        every = np.asarray(groups)
        classes = np.unique(every)
        sums = np.zeros((len(classes),) + self.relevance.shape[1:])
        counts = np.zeros(len(classes), dtype=np.int64)
        for start, rows in self.relevance.chunks():
            pos = np.searchsorted(classes, every[start:start + rows.shape[0]])
            for k in np.unique(pos):
                sel = pos == k
                sums[k] += rows[sel].astype(np.float64).sum(0)
                counts[k] += int(sel.sum())
        means = sums / counts.reshape((-1,) + (1,) * (sums.ndim - 1))
        return ClassMeans(classes, means, counts)

    def mean_heatmaps(self, by: str = "label", condition: Optional[int] = None,
                      **heatmap: Any) -> dict[int, Any]:
        """The per-class mean relevance rendered as heatmaps (:func:`lrp.image.heatmap`).

        ``condition`` picks the condition of a CRP store; ``heatmap`` keyword
        arguments (``cmap``, ``clip_percentile``, ...) go to :func:`lrp.image.heatmap`.
        Returns class -> ``PIL.Image``.
        """
        import torch

        from ..image import heatmap as render

        means = self.class_means(by)
        crp = self.settings.get("method") == "crp"
        if crp and condition is None:
            raise ValueError("a CRP store has one map per condition: pass condition=")
        out = {}
        for cls, mean in zip(means.classes.tolist(), means.means):
            r = torch.from_numpy(mean[condition] if crp else mean)
            out[cls] = render(r, **heatmap)
        return out
