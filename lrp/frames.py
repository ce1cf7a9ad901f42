"""Results as tables, and the names of inputs and outputs.

An :class:`lrp.Explanation` can carry names (innsight's converter ``input_names`` /
``output_names``): feature names or the names of each input dimension, and class
names.  :func:`input_names` and :func:`output_names` check and normalize them;
:func:`to_frame` turns the relevance into a long-format pandas DataFrame with one
row per sample, explained output and input element.

Columns of the frame, in order:

* ``sample`` -- the index of the sample in the batch;
* ``target`` -- the explained class (its name when ``output_names`` are set); left
  out for a custom target function;
* ``target_index`` -- only for explanations of ``k`` targets per sample
  (relevance ``(batch, k, ...)``): the position ``0 .. k - 1`` of the target;
* one column per sample dimension (:func:`coordinate_columns`): ``feature`` for
  samples of one dimension, ``channel`` and ``position`` for ``(C, L)``, and
  ``channel``, ``row``, ``column`` for images ``(C, H, W)`` -- the element's index,
  or its name when ``input_names`` name that dimension;
* ``value`` -- the relevance.

Named columns are ``pandas.Categorical`` with the names in input order, so sorting
or pivoting the frame keeps the input order.  The rows come in the relevance
tensor's (row-major) order; ``frame["value"].to_numpy().reshape(shape)`` restores
it, and so does pivoting a reordered frame (sort by the index columns first).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .explanation import Explanation

__all__ = ["coordinate_columns", "input_names", "output_names", "sample_shape", "to_frame"]

#: Names of each input dimension, ``None`` for the dimensions without names.
InputNames = Tuple[Optional[Tuple[str, ...]], ...]


def coordinate_columns(ndim: int) -> tuple[str, ...]:
    """The frame's column names for samples with ``ndim`` dimensions."""
    if ndim == 1:
        return ("feature",)
    if ndim == 2:
        return ("channel", "position")
    if ndim == 3:
        return ("channel", "row", "column")
    return ("channel",) + tuple(f"dim{i}" for i in range(1, ndim))


def sample_shape(explanation: Explanation) -> tuple[int, ...]:
    """The shape of one sample's relevance, without the batch and target axes."""
    t = explanation.target
    lead = 2 if t is not None and t.dim() == 2 else 1
    return tuple(explanation.relevance.shape[lead:])


def _labels(values: Any, size: int, what: str, where: str = "{size} entries"
            ) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{what} must be a sequence of names, got {values!r}")
    labels = tuple(str(v) for v in values)
    if len(labels) != size:
        raise ValueError(f"got {len(labels)} {what} for {where.format(size=size)}")
    if len(set(labels)) != len(labels):
        duplicates = sorted({v for v in labels if labels.count(v) > 1})
        raise ValueError(f"{what} must be unique; repeated: {', '.join(duplicates)}")
    return labels


def input_names(names: Any, shape: Sequence[int]) -> Optional[InputNames]:
    """Check and normalize input names for samples of ``shape``.

    Parameters
    ----------
    names
        ``None``; for samples of one dimension, one name per feature (``["age",
        "income"]``); for any samples, one entry per sample dimension, each ``None``
        or one name per index of that dimension (``[["red", "green", "blue"], None,
        None]`` names the channels of ``(3, H, W)`` images).
    shape
        The sample shape.

    Returns
    -------
    tuple or None
        One tuple of names (or ``None``) per dimension.
    """
    if names is None:
        return None
    shape = tuple(shape)
    if isinstance(names, str) or not isinstance(names, (Sequence, np.ndarray)):
        raise TypeError(f"input_names must be a sequence, got {names!r}")
    entries = list(names)
    flat = all(isinstance(v, (str, int, np.integer)) for v in entries)
    if flat and len(shape) == 1:
        return (_labels(entries, shape[0], "input names"),)
    if flat and entries:
        raise ValueError(f"samples of shape {shape} need one entry per dimension (a list of "
                         f"names or None each), e.g. [['red', 'green', 'blue'], None, None]")
    if len(entries) != len(shape):
        raise ValueError(f"input_names has {len(entries)} entries for samples of "
                         f"{len(shape)} dimension(s) {shape}")
    return tuple(None if v is None else _labels(v, n, f"input names of dimension {d}")
                 for d, (v, n) in enumerate(zip(entries, shape)))


def output_names(names: Any, classes: int) -> Optional[tuple[str, ...]]:
    """Check and normalize class names: ``None`` or one unique name per output."""
    if names is None:
        return None
    return _labels(names, classes, "output names", "a model with {size} outputs")


def _pandas():
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError("Explanation.to_frame needs pandas, which is not installed; install "
                          "it with pip install 'lrp[frames]' (or pip install pandas)") from err
    return pd


def to_frame(explanation: Explanation) -> pd.DataFrame:
    """The relevance as a long-format DataFrame (see the module docstring).

    Parameters
    ----------
    explanation
        Any :class:`lrp.Explanation`; its ``input_names`` and ``output_names`` label
        the coordinate and ``target`` columns.

    Returns
    -------
    pandas.DataFrame
        ``frame.attrs["method"]`` is the explanation's method.
    """
    pd = _pandas()
    values = explanation.numpy()
    t = explanation.target
    shape = sample_shape(explanation)
    lead = values.ndim - len(shape)
    columns: dict[str, Any] = {}

    def axis(i: int) -> np.ndarray:
        index = np.arange(values.shape[i]).reshape((-1,) + (1,) * (values.ndim - i - 1))
        return np.broadcast_to(index, values.shape).ravel()

    columns["sample"] = axis(0)
    if t is not None:
        classes = t.detach().cpu().numpy().astype(np.int64)
        classes = np.broadcast_to(classes.reshape(classes.shape + (1,) * len(shape)),
                                  values.shape).ravel()
        names = explanation.output_names
        columns["target"] = classes if names is None else \
            pd.Categorical.from_codes(classes, categories=list(names))
        if lead == 2:
            columns["target_index"] = axis(1)
    given = explanation.input_names or (None,) * len(shape)
    for d, (column, labels) in enumerate(zip(coordinate_columns(len(shape)), given)):
        index = axis(lead + d)
        columns[column] = index if labels is None else \
            pd.Categorical.from_codes(index, categories=list(labels))
    columns["value"] = values.ravel()
    frame = pd.DataFrame(columns)
    frame.attrs["method"] = explanation.method
    return frame
