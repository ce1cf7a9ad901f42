"""Similarity of two batches of relevance maps, one value per sample.

* ``spearman``: Spearman rank correlation of the flattened maps (ties get their
  average rank);
* ``pearson``: Pearson correlation of the flattened maps;
* ``ssim``: the structural similarity index (Wang et al. 2004) of 2-D maps, with the
  usual constants ``K1 = 0.01``, ``K2 = 0.03``, a 7x7 uniform window, sample
  covariances and the data range of the pair (``max - min`` over both maps), averaged
  over the window positions inside the map;
* ``hog``: Pearson correlation of the histograms of oriented gradients (Dalal and
  Triggs 2005) of 2-D maps: central-difference gradients (zero on the border rows and
  columns), 9 unsigned orientation bins over 0-180 degrees, magnitudes averaged per
  8x8 cell, overlapping 3x3-cell blocks normalized by L2-Hys (L2, clip at 0.2, L2);
  as Adebayo et al. 2018 compare maps.
"""
from __future__ import annotations

from typing import Callable, Dict, Union

import torch
from torch import Tensor
from torch.nn import functional as F

from .correlation import pearson

Similarity = Union[str, Callable[[Tensor, Tensor], Tensor]]

__all__ = ["spearman", "pearson", "ssim", "hog", "hog_similarity", "rankdata", "SIMILARITIES",
           "similarity_function"]


def rankdata(a: Tensor) -> Tensor:
    """Ranks ``1..n`` of each row of ``(batch, n)``, ties given their average rank."""
    values, order = a.sort(dim=1, stable=True)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.long().cumsum(dim=1) - 1
    position = torch.arange(1, a.shape[1] + 1, device=a.device, dtype=torch.float64).expand_as(values)
    sums = torch.zeros_like(position).scatter_add_(1, group, position)
    counts = torch.zeros_like(position).scatter_add_(1, group, torch.ones_like(position))
    average = (sums / counts.clamp(min=1)).gather(1, group)
    return torch.empty_like(average).scatter_(1, order, average)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per sample of two equally shaped batches."""
    return pearson(rankdata(a.flatten(1)), rankdata(b.flatten(1))).to(a.dtype)


def _flat_pearson(a: Tensor, b: Tensor) -> Tensor:
    return pearson(a.flatten(1), b.flatten(1))


def _maps(a: Tensor, name: str) -> Tensor:
    if a.dim() == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.dim() != 3:
        raise ValueError(f"{name} compares 2-D maps (batch, H, W) or (batch, 1, H, W), "
                         f"got shape {tuple(a.shape)}")
    return a


def ssim(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """Structural similarity per sample of 2-D maps ``(batch, H, W)`` (see module doc)."""
    a, b = _maps(a, "ssim").double(), _maps(b, "ssim").double()
    if min(a.shape[1:]) < window:
        raise ValueError(f"ssim needs maps of at least {window}x{window}, got {tuple(a.shape[1:])}")
    both = torch.cat([a.flatten(1), b.flatten(1)], dim=1)
    data_range = (both.amax(1) - both.amin(1)).reshape(-1, 1, 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def mean(v: Tensor) -> Tensor:
        return F.avg_pool2d(v[:, None], window, stride=1)[:, 0]

    cov_norm = window * window / (window * window - 1)
    ua, ub = mean(a), mean(b)
    va = cov_norm * (mean(a * a) - ua * ua)
    vb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    result = s.flatten(1).mean(dim=1)
    same = (a == b).flatten(1).all(dim=1)  # e.g. two constant maps: 0/0 above
    return torch.where(same, torch.ones_like(result), result)


def hog(maps: Tensor, orientations: int = 9, cell: int = 8, block: int = 3) -> Tensor:
    """Histogram-of-oriented-gradients descriptors ``(batch, features)`` of 2-D maps."""
    m = _maps(maps, "hog").double()
    batch, height, width = m.shape
    cells_h, cells_w = height // cell, width // cell
    if cells_h < block or cells_w < block:
        raise ValueError(f"hog needs maps of at least {block * cell}x{block * cell}, "
                         f"got {height}x{width}")
    g_row = torch.zeros_like(m)
    g_col = torch.zeros_like(m)
    g_row[:, 1:-1] = m[:, 2:] - m[:, :-2]
    g_col[:, :, 1:-1] = m[:, :, 2:] - m[:, :, :-2]
    magnitude = torch.hypot(g_row, g_col)
    angle = torch.rad2deg(torch.atan2(g_row, g_col)) % 180
    bins = (angle / (180 / orientations)).floor().long().clamp(max=orientations - 1)
    m_cells = magnitude[:, :cells_h * cell, :cells_w * cell]
    b_cells = bins[:, :cells_h * cell, :cells_w * cell]
    votes = torch.zeros((batch, orientations, cells_h * cell, cells_w * cell), dtype=m.dtype,
                        device=m.device)
    votes.scatter_(1, b_cells[:, None], m_cells[:, None])
    histogram = F.avg_pool2d(votes, cell)  # (batch, orientations, cells_h, cells_w)
    blocks = histogram.unfold(2, block, 1).unfold(3, block, 1)  # (b, o, bh, bw, block, block)
    blocks = blocks.permute(0, 2, 3, 4, 5, 1).reshape(batch, cells_h - block + 1,
                                                      cells_w - block + 1, -1)
    eps = 1e-5
    normed = blocks / torch.sqrt((blocks ** 2).sum(-1, keepdim=True) + eps ** 2)
    normed = normed.clamp(max=0.2)
    normed = normed / torch.sqrt((normed ** 2).sum(-1, keepdim=True) + eps ** 2)
    return normed.flatten(1)


def hog_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the HOG descriptors of two batches of 2-D maps."""
    return pearson(hog(a), hog(b)).to(a.dtype)


#: Named similarity measures.
SIMILARITIES: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "spearman": spearman,
    "pearson": _flat_pearson,
    "ssim": lambda a, b: ssim(a, b).to(a.dtype),
    "hog": hog_similarity,
}


def similarity_function(similarity: Similarity) -> Callable[[Tensor, Tensor], Tensor]:
    """A similarity measure by name (see :data:`SIMILARITIES`) or the callable itself."""
    if callable(similarity):
        return similarity
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {tuple(SIMILARITIES)} or a callable "
                         f"f(a, b) -> (batch,), got {similarity!r}")
    return SIMILARITIES[similarity]
