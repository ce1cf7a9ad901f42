"""Interpretable features: the groups of input elements that LIME and Kernel SHAP
switch on and off.

Model-agnostic methods (:mod:`lrp.lime`, :mod:`lrp.kernel_shap`) explain a sample
``x`` with ``M`` *interpretable features*: disjoint groups of its elements that are
either present (taken from ``x``) or absent (taken from a reference sample).  A
binary vector ``z`` in ``{0, 1}^M`` (a *coalition*) selects the present features;
the model sees ``h_x(z) = z[mask] * x + (1 - z[mask]) * reference``, where ``mask``
maps every input element to the index of its feature.

:class:`Features` holds the mask of a batch (one labelling per sample, since
superpixels differ between images) and does the two conversions both methods need:
:meth:`Features.compose` builds model inputs from coalitions and
:meth:`Features.spread` turns one value per feature back into an input-shaped map,
dividing each value equally among the feature's elements (so sums are kept: the
relevance of a superpixel is the sum over its pixels).

Ways to make features:

* :func:`elements` -- every input element is a feature (tabular data);
* :func:`grid` -- a regular grid over the spatial dimensions, all channels together;
* :func:`superpixels` -- SLIC superpixels (Achanta et al. 2012) from scikit-image
  (``pip install 'lrp[image]'``), one segmentation per image;
* :func:`from_mask` -- any integer mask of your own (e.g. feature groups of a table,
  a segmentation from elsewhere).

:func:`resolve` picks the default when none is given: :func:`elements` for samples
of one dimension ``(batch, features)``, else :func:`grid` with 8 cells along each
spatial dimension (64 cells on ``(batch, C, H, W)`` images; fewer along dimensions
shorter than 8).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from .batching import positive_int

__all__ = ["Features", "elements", "from_mask", "grid", "resolve", "superpixels"]

FeaturesLike = Union[None, "Features", Tensor]


@dataclass(frozen=True)
class Features:
    """Interpretable features of a batch of samples.

    Attributes
    ----------
    mask
        ``(batch, *sample_shape)`` int64: the feature index of every input element,
        numbered ``0 .. counts[b] - 1`` within sample ``b`` (every index is used).
    counts
        ``(batch,)`` int64: the number of features ``M_b`` of each sample.
    """

    mask: Tensor
    counts: Tensor

    @property
    def width(self) -> int:
        """The largest number of features of a sample: the width of padded
        per-feature arrays ``(batch, width)``."""
        return int(self.counts.max()) if self.counts.numel() else 0

    def active(self) -> Tensor:
        """``(batch, width)`` bool: which columns of a padded array are features of
        each sample (samples with fewer features have padding columns)."""
        cols = torch.arange(self.width, device=self.counts.device)
        return cols < self.counts[:, None]

    def sizes(self) -> Tensor:
        """``(batch, width)`` int64: the number of input elements of each feature."""
        flat = self.mask.flatten(1)
        sizes = torch.zeros(flat.shape[0], self.width, dtype=torch.long, device=flat.device)
        return sizes.scatter_add_(1, flat, torch.ones_like(flat))

    def compose(self, x: Tensor, present: Tensor, reference: Tensor) -> Tensor:
        """Model inputs for one coalition per sample.

        Parameters
        ----------
        x
            The samples ``(batch, *sample_shape)``.
        present
            ``(batch, width)`` bool: the present features of each sample.
        reference
            The values of absent elements, broadcastable to ``x``.

        Returns
        -------
        torch.Tensor
            ``x`` where the element's feature is present, ``reference`` elsewhere.
        """
        keep = present.gather(1, self.mask.flatten(1)).view(x.shape)
        return torch.where(keep, x, reference)

    def spread(self, values: Tensor) -> Tensor:
        """One value per feature as an input-shaped map.

        Parameters
        ----------
        values
            ``(batch, width)`` or ``(batch, k, width)`` (``k`` targets per sample).

        Returns
        -------
        torch.Tensor
            ``(batch, *sample_shape)`` or ``(batch, k, *sample_shape)``: every element
            gets its feature's value divided by the feature's number of elements.
        """
        per_element = values / self.sizes().clamp(min=1).to(values.dtype).reshape(
            (values.shape[0],) + (1,) * (values.dim() - 2) + (self.width,))
        flat = self.mask.flatten(1)
        if values.dim() == 3:
            flat = flat[:, None].expand(-1, values.shape[1], -1)
        out = per_element.gather(-1, flat)
        return out.reshape(values.shape[:-1] + self.mask.shape[1:])

    def select(self, rows: slice) -> Features:
        """The features of the samples ``rows``."""
        return Features(self.mask[rows], self.counts[rows])

    def to(self, device: torch.device) -> Features:
        """The features on ``device``."""
        return Features(self.mask.to(device), self.counts.to(device))


# --------------------------------------------------------------------------- constructors

def from_mask(mask, inputs: Tensor) -> Features:
    """Features from an integer mask of your own.

    Parameters
    ----------
    mask
        Integers (tensor or array) broadcastable to ``inputs``: one mask for all
        samples (e.g. ``(H, W)``, ``(1, 1, H, W)`` or ``(features,)``) or one per
        sample (``(batch, ...)``).  Elements with the same value form one feature;
        the values need not be consecutive (they are renumbered ``0 .. M - 1`` per
        sample, in increasing order).
    inputs
        The samples the features are for.

    Returns
    -------
    Features
    """
    m = torch.as_tensor(mask, device=inputs.device)
    if m.is_floating_point() or m.is_complex() or m.dtype == torch.bool:
        raise TypeError(f"a feature mask must hold integers, got {m.dtype}")
    try:
        m = torch.broadcast_to(m, inputs.shape)
    except RuntimeError:
        raise ValueError(f"a feature mask of shape {tuple(m.shape)} does not broadcast to "
                         f"inputs of shape {tuple(inputs.shape)}") from None
    labels, counts = [], []
    for sample in m:
        _, inverse = torch.unique(sample, return_inverse=True)
        labels.append(inverse.long())
        counts.append(int(inverse.max()) + 1 if inverse.numel() else 0)
    if not labels:
        return Features(m.long(), torch.zeros(0, dtype=torch.long, device=inputs.device))
    return Features(torch.stack(labels), torch.tensor(counts, device=inputs.device))


def elements(inputs: Tensor) -> Features:
    """Every element of a sample is its own feature (tabular data).

    Returns
    -------
    Features
        ``M = prod(sample_shape)`` features per sample, numbered in row-major order.
    """
    n = int(np.prod(inputs.shape[1:]))
    mask = torch.arange(n, device=inputs.device).reshape(inputs.shape[1:])
    return Features(mask.expand(inputs.shape).clone(),
                    torch.full((inputs.shape[0],), n, dtype=torch.long, device=inputs.device))


def grid(inputs: Tensor, cells: Union[int, Sequence[int]] = 8) -> Features:
    """A regular grid over the spatial dimensions; all channels of a cell together.

    The spatial dimensions are all sample dimensions but the first (the channels)
    when samples have several dimensions, else the only one.  Along a dimension of
    size ``n`` split into ``c`` cells, element ``i`` is in cell ``floor(i * c / n)``
    (cells differ in size by at most one element).

    Parameters
    ----------
    inputs
        The samples ``(batch, C, H, W)``, ``(batch, C, L)``, ``(batch, features)``, ...
    cells
        Cells per spatial dimension: one int for all, or one per dimension
        (e.g. ``(4, 8)`` for 4 rows of 8 cells).  At most the dimension's size.

    Returns
    -------
    Features
        ``prod(cells)`` features per sample, numbered in row-major order.
    """
    shape = tuple(inputs.shape[1:])
    spatial = shape[1:] if len(shape) > 1 else shape
    if isinstance(cells, (int, np.integer)) and not isinstance(cells, bool):
        per_dim = (positive_int(cells, "cells"),) * len(spatial)
    else:
        per_dim = tuple(positive_int(c, "cells") for c in cells)
        if len(per_dim) != len(spatial):
            raise ValueError(f"cells {tuple(cells)} needs one entry per spatial dimension "
                             f"{spatial} of samples {shape}")
    if any(c > n for c, n in zip(per_dim, spatial)):
        raise ValueError(f"cells {per_dim} exceed the spatial size {spatial}")
    index = torch.zeros((), dtype=torch.long, device=inputs.device)
    for c, n in zip(per_dim, spatial):
        cell = torch.arange(n, device=inputs.device) * c // n
        index = index[..., None] * c + cell
    mask = index.expand(shape) if len(shape) > 1 else index
    return Features(mask.expand(inputs.shape).clone(),
                    torch.full((inputs.shape[0],), int(np.prod(per_dim)), dtype=torch.long,
                               device=inputs.device))


def superpixels(inputs: Tensor, n_segments: int = 50, *, compactness: float = 10.0,
                sigma: float = 1.0, images=None) -> Features:
    """SLIC superpixels (Achanta et al. 2012), via scikit-image, per image.

    Each image is min-max scaled to ``[0, 1]`` (over all its channels) before
    segmenting, so that ``compactness`` means the same for normalized inputs and
    raw pixels.  Every channel of a superpixel belongs to the same feature.

    Parameters
    ----------
    inputs
        Images ``(batch, C, H, W)`` (any ``C``; 3 is treated as colour).
    n_segments
        The approximate number of superpixels per image.
    compactness
        Balance of colour and space: larger values give squarer superpixels.
    sigma
        Width of the Gaussian smoothing before segmenting (pixels).
    images
        Optional images to segment instead of ``inputs`` (e.g. the photographs before
        normalization), shaped like ``inputs``.

    Returns
    -------
    Features
        A different number of features per image (as many superpixels as SLIC made).

    Raises
    ------
    ImportError
        Without scikit-image (``pip install 'lrp[image]'``).
    """
    try:
        from skimage.segmentation import slic
    except ImportError as err:
        raise ImportError("superpixels need scikit-image, which is not installed; install it "
                          "with pip install 'lrp[image]' (or pip install scikit-image), or use "
                          "lrp.features.grid") from err
    if inputs.dim() != 4:
        raise ValueError(f"superpixels need images (batch, C, H, W), got shape "
                         f"{tuple(inputs.shape)}")
    n_segments = positive_int(n_segments, "n_segments")
    source = inputs if images is None else torch.as_tensor(images)
    if source.shape != inputs.shape:
        raise ValueError(f"images of shape {tuple(source.shape)} do not match inputs of shape "
                         f"{tuple(inputs.shape)}")
    masks = []
    for image in source.detach().to("cpu", torch.float64).numpy():
        low, high = image.min(), image.max()
        unit = (image - low) / (high - low) if high > low else np.zeros_like(image)
        labels = slic(unit.transpose(1, 2, 0), n_segments=n_segments, compactness=compactness,
                      sigma=sigma, start_label=0, channel_axis=-1,
                      convert2lab=image.shape[0] == 3)
        masks.append(np.broadcast_to(labels, image.shape))
    return from_mask(torch.from_numpy(np.stack(masks)), inputs)


def resolve(features: FeaturesLike, inputs: Tensor) -> Features:
    """The features of ``inputs``: ``features`` checked, or the default.

    Parameters
    ----------
    features
        ``None`` (default: :func:`elements` for samples of one dimension, else
        :func:`grid` with 8 cells along each spatial dimension, or as many as it has
        elements if fewer), a :class:`Features` for ``inputs``, or an integer mask
        (see :func:`from_mask`).
    inputs
        The samples.

    Returns
    -------
    Features
        On ``inputs``' device.
    """
    if features is None:
        if inputs.dim() == 2:
            return elements(inputs)
        return grid(inputs, tuple(min(8, n) for n in inputs.shape[2:]))
    if isinstance(features, Features):
        if tuple(features.mask.shape) != tuple(inputs.shape):
            raise ValueError(f"features were made for inputs of shape "
                             f"{tuple(features.mask.shape)}, got inputs of shape "
                             f"{tuple(inputs.shape)}")
        return features.to(inputs.device)
    return from_mask(features, inputs)


def check_counts(features: Features, minimum: int = 1,
                 method: Optional[str] = None) -> None:
    """A clear ValueError if a sample has fewer than ``minimum`` features."""
    if features.counts.numel() and int(features.counts.min()) < minimum:
        b = int(features.counts.argmin())
        raise ValueError(f"{method or 'this method'} needs at least {minimum} interpretable "
                         f"feature(s) per sample; sample {b} has {int(features.counts[b])}")
