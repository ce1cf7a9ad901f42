"""Features, patches, their order by relevance, and what replaces them (fills).

A *feature* is one position of the input with all its channels: a pixel of an image
``(batch, C, H, W)``, a time step of a signal ``(batch, C, L)``, an element of a
tabular row ``(batch, F)``.  Its relevance is the relevance summed over the channels.
A *patch* is a block of ``patch_size`` features along every spatial dimension; its
relevance is the sum over the block.  Patches are ordered by relevance with a stable
sort, so ties keep the order of the flattened input.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import functional as F

from ..batching import rand_like

Fill = Union[str, float, Tensor, Callable[[Tensor, "torch.Generator | None"], Tensor]]

#: Named fills of :func:`fill_values`.
FILLS = ("zero", "mean", "min", "uniform", "blur")
ORDERS = ("morf", "lerf")


def spatial_shape(x: Tensor) -> Tuple[int, ...]:
    """The feature grid: ``x.shape[2:]`` for inputs with channels, else ``x.shape[1:]``."""
    return tuple(x.shape[2:]) if x.dim() >= 3 else tuple(x.shape[1:])


def n_features(x: Tensor) -> int:
    return math.prod(spatial_shape(x))


def feature_relevance(relevance: Tensor, x: Tensor) -> Tensor:
    """Relevance per feature ``(batch, *spatial)``: summed over the channels."""
    return relevance.sum(1) if x.dim() >= 3 else relevance


def feature_mask(mask: Tensor, x: Tensor) -> Tensor:
    """A ``(batch, *spatial)`` feature mask shaped to broadcast against ``x``."""
    return mask.unsqueeze(1) if x.dim() >= 3 else mask


def patch_sizes(patch_size: Union[int, Sequence[int]], spatial: Sequence[int]) -> Tuple[int, ...]:
    """``patch_size`` per spatial dimension; a clear error unless it divides the input."""
    sizes = (patch_size,) * len(spatial) if isinstance(patch_size, int) else tuple(patch_size)
    if len(sizes) != len(spatial) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                         for s in sizes):
        raise ValueError(f"patch_size must be a positive int or one per spatial dimension "
                         f"{tuple(spatial)}, got {patch_size!r}")
    if any(n % s for n, s in zip(spatial, sizes)):
        raise ValueError(f"patch_size {patch_size} does not divide the input's spatial shape "
                         f"{tuple(spatial)}")
    return sizes


def patch_sums(fmap: Tensor, sizes: Tuple[int, ...]) -> Tensor:
    """Sums of ``(batch, *spatial)`` over non-overlapping patches: ``(batch, n_patches)``,
    patches in row-major order of the patch grid."""
    shape = [fmap.shape[0]]
    for n, s in zip(fmap.shape[1:], sizes):
        shape += [n // s, s]
    blocks = fmap.reshape(shape)
    return blocks.sum(dim=tuple(range(2, blocks.dim(), 2))).flatten(1)


def expand_patches(values: Tensor, spatial: Sequence[int], sizes: Tuple[int, ...]) -> Tensor:
    """Patch values ``(batch, n_patches)`` spread over their features ``(batch, *spatial)``."""
    grid = [n // s for n, s in zip(spatial, sizes)]
    out = values.reshape([values.shape[0]] + grid)
    for dim, s in enumerate(sizes, start=1):
        out = out.repeat_interleave(s, dim=dim)
    return out


def ranks(scores: Tensor, order: str) -> Tensor:
    """The rank of each patch in the perturbation order (0: perturbed first).

    ``"morf"``: most relevant first; ``"lerf"``: least relevant first; stable.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    key = -scores if order == "morf" else scores
    perm = torch.argsort(key, dim=1, stable=True)
    rank = torch.empty_like(perm)
    rank.scatter_(1, perm, torch.arange(perm.shape[1], device=perm.device).expand_as(perm))
    return rank


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    dims = x.dim() - 2
    if dims not in (1, 2, 3):
        raise ValueError(f"the blur fill needs inputs with channels and 1-3 spatial dims, "
                         f"got shape {tuple(x.shape)}")
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    channels = x.shape[1]
    out = x
    for d in range(dims):
        shape = [channels, 1] + [1] * dims
        shape[2 + d] = kernel.numel()
        pad = [0, 0] * dims
        # F.pad lists the last dimension first
        pad[2 * (dims - 1 - d)] = pad[2 * (dims - 1 - d) + 1] = radius
        mode = "reflect" if x.shape[2 + d] > radius else "replicate"
        out = conv(F.pad(out, pad, mode=mode), kernel.reshape(shape), groups=channels)
    return out


def blur_fill(sigma: float = 2.0) -> Callable[[Tensor, "torch.Generator | None"], Tensor]:
    """A fill that replaces features by a Gaussian blur of the input (``sigma`` in
    features, reflecting borders); ``fill="blur"`` is ``blur_fill(2.0)``."""
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return lambda x, generator: _gaussian_blur(x, sigma)


def fill_values(x: Tensor, fill: Fill, generator: "torch.Generator | None") -> Tensor:
    """The values that replace perturbed features, ``x``-shaped (drawn once per sample).

    ``"zero"``: 0.  ``"mean"``: the sample's mean per channel.  ``"min"``: the sample's
    minimum (a black image for normalized images).  ``"uniform"``: uniform noise
    between the sample's minimum and maximum (Samek et al. 2017).  ``"blur"``: the
    input blurred (:func:`blur_fill`).  A number or a tensor broadcastable to ``x``
    (e.g. one reference sample); a callable ``fill(x, generator) -> tensor``.
    """
    if isinstance(fill, str):
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, a number, a tensor or a callable, "
                             f"got {fill!r}")
        flat = x.flatten(1)
        low = flat.amin(1).reshape((-1,) + (1,) * (x.dim() - 1))
        if fill == "zero":
            return torch.zeros_like(x)
        if fill == "mean":
            dims = tuple(range(2, x.dim())) if x.dim() >= 3 else (1,)
            return x.mean(dim=dims, keepdim=True).expand_as(x)
        if fill == "min":
            return low.expand_as(x)
        if fill == "uniform":
            high = flat.amax(1).reshape(low.shape)
            return low + (high - low) * rand_like(x.shape, generator, x)
        return blur_fill()(x, generator)
    if callable(fill) and not isinstance(fill, Tensor):
        values = fill(x, generator)
    else:
        values = torch.as_tensor(fill, device=x.device, dtype=x.dtype)
    if not isinstance(values, Tensor):
        raise TypeError(f"a fill function must return a tensor, got {type(values).__name__}")
    try:
        values = torch.broadcast_to(values.to(device=x.device, dtype=x.dtype), x.shape)
    except RuntimeError:
        raise ValueError(f"fill of shape {tuple(values.shape)} does not broadcast to inputs of "
                         f"shape {tuple(x.shape)}") from None
    if not torch.isfinite(values).all():
        raise ValueError("fill contains NaN or infinite values")
    return values
