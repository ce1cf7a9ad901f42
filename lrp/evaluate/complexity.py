"""Complexity of an explanation: sparseness (Chalasani et al. 2020) and complexity
(Bhatt et al. 2020), over the relevance per feature (summed over channels).

* sparseness: the Gini index of ``|R|``: with ``r_(1) <= ... <= r_(n)`` sorted,
  ``G = sum_i (2i - n - 1) r_(i) / (n sum_i r_(i))``; 0 for equal values, ``1 - 1/n``
  for a single non-zero feature (higher is sparser);
* complexity: the entropy of ``p = |R| / sum |R|``, ``-sum_i p_i log p_i`` (natural
  log, ``0 log 0 = 0``); 0 for a single feature, ``log n`` for a uniform map (lower is
  simpler).

Both are NaN for an all-zero map.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from ..targets import Target
from .explainers import Explainer, feature_map
from .result import Scores

__all__ = ["sparseness", "complexity", "gini", "entropy"]


def gini(values: Tensor) -> Tensor:
    """Gini index of each row of non-negative ``(batch, n)`` (NaN for a zero row)."""
    v = values.sort(dim=1).values
    n = v.shape[1]
    i = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    total = v.sum(dim=1)
    g = ((2 * i - n - 1) * v).sum(dim=1) / (n * total)
    return torch.where(total > 0, g, torch.full_like(g, float("nan")))


def entropy(values: Tensor) -> Tensor:
    """Entropy of each row of non-negative ``(batch, n)`` normalized to sum 1 (NaN for a
    zero row)."""
    total = values.sum(dim=1, keepdim=True)
    p = values / total
    h = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(dim=1)
    return torch.where(total[:, 0] > 0, h, torch.full_like(h, float("nan")))


def sparseness(model: Union[nn.Module, None], inputs: Tensor, explanation: Explainer,
               target: Target = None) -> Scores:
    """Gini index of the absolute relevance per sample (higher is sparser).

    Parameters
    ----------
    model
        The model (may be ``None`` when ``explanation`` is a relevance tensor).
    inputs, explanation, target
        As in :func:`lrp.evaluate.pixel_flipping`.

    Returns
    -------
    Scores
    """
    return Scores("Sparseness", gini(feature_map(model, inputs, explanation, target).abs()), True)


def complexity(model: Union[nn.Module, None], inputs: Tensor, explanation: Explainer,
               target: Target = None) -> Scores:
    """Entropy of the normalized absolute relevance per sample (lower is simpler).
    Parameters as in :func:`sparseness`.

    Returns
    -------
    Scores
    """
    return Scores("Complexity", entropy(feature_map(model, inputs, explanation, target).abs()),
                  False)
