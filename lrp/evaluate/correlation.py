"""Faithfulness correlation (Bhatt et al. 2020).

For ``runs`` random subsets ``S`` of ``subset_size`` features (drawn without
replacement, independently per sample and run), the Pearson correlation over the runs
between the relevance of the subset ``sum_{i in S} R_i`` and the output drop
``f(x) - f(x with x_S replaced by the fill)``; one correlation per sample (NaN where
either side is constant).
"""
from __future__ import annotations

from typing import List, Union

import torch
from torch import Tensor, nn

from ..batching import Seed, make_generator, positive_int, rand_like
from ..targets import Target
from .explainers import Explainer, relevance_for
from .features import Fill, feature_mask, feature_relevance, fill_values, n_features, spatial_shape
from .outputs import perturbed_scores, prepare, score
from .result import Scores

__all__ = ["faithfulness_correlation", "pearson"]


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the rows of two ``(batch, n)`` tensors (NaN for a constant
    row)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    corr = (a * b).sum(dim=1) / denominator
    return torch.where(denominator > 0, corr, torch.full_like(corr, float("nan")))


def faithfulness_correlation(model: nn.Module, inputs: Tensor, explanation: Explainer,
                             target: Target = None, *, runs: int = 100,
                             subset_size: Union[int, None] = None, fill: Fill = "min",
                             softmax: bool = False, subsets: Union[Tensor, None] = None,
                             generator: Seed = None, batch_size: int = 256,
                             progress: Union[bool, None] = None) -> Scores:
    """Faithfulness correlation per sample.

    Parameters
    ----------
    model, inputs, explanation, target, softmax, batch_size, progress
        As in :func:`lrp.evaluate.pixel_flipping`.
    runs
        Number of random subsets per sample.
    subset_size
        Features per subset; ``None``: a fifth of the features.  At most the number of
        features.
    fill
        What replaces the subset (see :func:`lrp.evaluate.features.fill_values`).
    subsets
        Fixed subsets instead of random ones: flat feature indices ``(batch, runs,
        subset_size)`` or ``(runs, subset_size)`` for every sample.
    generator
        Seed or :class:`torch.Generator` for the subsets (and a random fill).

    Returns
    -------
    Scores
        ``scores``: the correlation per sample (higher is better).
    """
    x, output, t, batch_size = prepare(model, inputs, target, batch_size)
    relevance = feature_relevance(relevance_for(explanation, model, x, t), x).flatten(1)
    n = n_features(x)
    batch = x.shape[0]
    if subsets is not None:
        subsets = torch.as_tensor(subsets, device=x.device)
        if subsets.dim() == 2:
            subsets = subsets.expand(batch, -1, -1)
        if subsets.dim() != 3 or subsets.shape[0] != batch or subsets.dtype.is_floating_point:
            raise ValueError(f"subsets must be integer indices (batch={batch}, runs, size) or "
                             f"(runs, size), got shape {tuple(subsets.shape)}")
        if ((subsets < 0) | (subsets >= n)).any():
            raise ValueError(f"subset indices must be in [0, {n}) (the number of features)")
        runs, subset_size = subsets.shape[1], subsets.shape[2]
    runs = positive_int(runs, "runs")
    subset_size = positive_int(max(1, n // 5) if subset_size is None else subset_size,
                               "subset_size")
    if subset_size > n:
        raise ValueError(f"subset_size={subset_size} is larger than the number of features ({n})")
    gen = make_generator(generator)
    values = fill_values(x, fill, gen)
    relevance_sums: List[Tensor] = []

    def make_pass(p: int) -> Tensor:
        if subsets is not None:
            chosen = subsets[:, p].long()
        else:
            chosen = rand_like((batch, n), gen, relevance).argsort(dim=1)[:, :subset_size]
        relevance_sums.append(relevance.gather(1, chosen).sum(dim=1))
        mask = torch.zeros((batch, n), dtype=torch.bool, device=x.device)
        mask.scatter_(1, chosen, True)
        mask = feature_mask(mask.reshape((batch,) + spatial_shape(x)), x)
        return torch.where(mask, values, x)

    perturbed = perturbed_scores(model, make_pass, runs, t, softmax=softmax,
                                 batch_size=batch_size, progress=progress,
                                 desc="faithfulness correlation")
    drops = score(output, t, softmax)[:, None] - perturbed
    sums = torch.stack(relevance_sums, dim=1)
    return Scores("FaithfulnessCorrelation", pearson(sums.to(drops.dtype), drops), True,
                  {"relevance_sum": sums, "output_drop": drops})
