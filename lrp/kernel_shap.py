"""Kernel SHAP (Lundberg and Lee 2017): Shapley values by weighted linear regression.

With ``M`` interpretable features (:mod:`lrp.features`) and reference samples
``r_1 .. r_N`` (``background``), the value of a coalition ``z`` in ``{0, 1}^M`` of
present features is the expected output when the absent features are drawn from
the background::

    f_x(z) = 1/N sum_j f(h(x, z, r_j))_c ,   phi_0 = f_x(0) = 1/N sum_j f(r_j)_c .

The Shapley value of feature ``i`` is its average marginal contribution
``phi_i = sum_{S not containing i} |S|! (M - |S| - 1)! / M! (f_x(S + i) - f_x(S))``.
Lundberg and Lee show that the ``phi`` are the solution of the weighted least
squares problem ::

    min_phi  sum_z pi(z) (f_x(z) - phi_0 - sum_i phi_i z_i)^2
    pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))   for 0 < |z| < M,

where the infinite weights of the empty and the full coalition become constraints:
the intercept is ``phi_0`` and ``sum_i phi_i = f(x)_c - phi_0`` (efficiency).  Here
the constrained problem is solved exactly (a Lagrange multiplier, in float64).

Coalitions: when ``2^M - 2 <= n_samples`` all of them are enumerated and the result
is exactly the Shapley values.  Otherwise the budget is spent as follows (sizes
``s`` and ``M - s`` are handled as a pair; the kernel's total weight on size ``s``
is ``m(s) = (M - 1) / (s (M - s))``, spread evenly over its ``C(M, s)`` coalitions):

1. from the outside in (``s = 1, 2, ...``, the sizes whose coalitions weigh most),
   a size pair is enumerated completely, with the exact weights ``pi(z)``, while its
   share of the remaining kernel weight, times the remaining budget, is at least its
   number of coalitions;
2. the remaining budget is drawn at random: a size ``s`` with probability
   proportional to ``m(s)`` among the sizes not enumerated, a coalition of that
   size uniformly, and its complement with it (paired sampling); each drawn
   coalition gets the weight ``sum m(s) / (number drawn)`` over those sizes (a Monte
   Carlo estimate of the regression's normal equations).

For a linear model ``f(x) = w . x + b`` with one feature per element, ``f_x`` is
additive and Kernel SHAP returns ``phi_i = w_i (x_i - mean_j r_ji)`` from any
coalitions that determine the fit (at least ``M - 1`` in general position; with
fewer, the minimum-norm solution of the regression is returned).
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Callable, Optional

import torch
from torch import Tensor

from .batching import Seed, model_outputs, positive_int
from .explanation import Explanation
from .features import FeaturesLike
from .surrogate import (Background, Fitted, coalition_outputs, fit, in_groups, problem,
                        solve_dtype, surrogate)
from .targets import Target, check_class_target, check_inputs, pick

__all__ = ["kernel_shap", "shapley_coalitions", "shapley_kernel"]


def shapley_kernel(m: int, size: int) -> float:
    """``pi(z)`` of one coalition with ``size`` of ``m`` features present
    (``0 < size < m``)."""
    return (m - 1) / (math.comb(m, size) * size * (m - size))


@lru_cache(maxsize=64)
def _enumerated(m: int, sizes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """All coalitions of the given sizes, with their kernel weights."""
    rows, weights = [], []
    for size in sizes:
        for combo in itertools.combinations(range(m), size):
            row = torch.zeros(m, dtype=torch.bool)
            row[list(combo)] = True
            rows.append(row)
        weights += [shapley_kernel(m, size)] * math.comb(m, size)
    if not rows:
        return torch.zeros(0, m, dtype=torch.bool), torch.zeros(0, dtype=torch.float64)
    return torch.stack(rows), torch.tensor(weights, dtype=torch.float64)


def _all_coalitions(m: int) -> tuple[Tensor, Tensor]:
    codes = torch.arange(1, 2 ** m - 1)
    z = (codes[:, None] >> torch.arange(m)) & 1 == 1
    sizes = z.sum(1)
    table = torch.tensor([0.0] + [shapley_kernel(m, s) for s in range(1, m)] + [0.0],
                         dtype=torch.float64)
    return z, table[sizes]


def shapley_coalitions(m: int, n: int, generator: Optional[torch.Generator] = None
                       ) -> tuple[Tensor, Tensor]:
    """Kernel SHAP's coalitions of ``m`` features within a budget of ``n``.

    Parameters
    ----------
    m
        Number of features.
    n
        Budget: the number of coalitions (at most).
    generator
        Source of randomness for the sampled part: draws
        ``torch.multinomial(mass, ceil(left / 2), replacement=True)`` for the sizes,
        then ``torch.rand(ceil(left / 2), m)`` for the coalitions, on its device.

    Returns
    -------
    coalitions : torch.Tensor
        ``(k, m)`` bool, ``k <= n``; neither the empty nor the full coalition.
    weights : torch.Tensor
        ``(k,)`` float64: the kernel weight each coalition stands for.
    """
    if m < 2:
        return torch.zeros(0, m, dtype=torch.bool), torch.zeros(0, dtype=torch.float64)
    if 2 ** m - 2 <= n:
        return _all_coalitions(m)
    mass = {s: (m - 1) / (s * (m - s)) for s in range(1, m)}
    remaining = list(range(1, m))
    left = n
    enumerated: list[int] = []
    for s in range(1, m // 2 + 1):
        pair = [s] if 2 * s == m else [s, m - s]
        count = math.comb(m, s) * len(pair)
        share = sum(mass[p] for p in pair) / sum(mass[r] for r in remaining)
        if count > left * share:
            break
        enumerated += pair
        remaining = [r for r in remaining if r not in pair]
        left -= count
    z, w = _enumerated(m, tuple(sorted(enumerated)))
    if remaining and left > 0:
        draws = math.ceil(left / 2)
        device = generator.device if generator is not None else torch.device("cpu")
        probs = torch.tensor([mass[r] for r in remaining], dtype=torch.float64, device=device)
        sizes = torch.tensor(remaining, device=device)[
            torch.multinomial(probs, draws, replacement=True, generator=generator)]
        keys = torch.rand(draws, m, generator=generator, device=device)
        drawn = keys.argsort(1).argsort(1) < sizes[:, None]
        drawn = torch.stack([drawn, ~drawn], 1).reshape(2 * draws, m)[:left].cpu()
        weight = sum(mass[r] for r in remaining) / left
        z = torch.cat([z, drawn])
        w = torch.cat([w, torch.full((left,), weight, dtype=torch.float64)])
    return z, w


def _coalitions(counts: Tensor, n: int, generator: Optional[torch.Generator],
                device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-sample coalitions padded to a common number (padding rows weigh 0)."""
    per_sample = [shapley_coalitions(m, n, generator) for m in counts.tolist()]
    rows = max(len(w) for _, w in per_sample)
    width = int(counts.max())
    z = torch.zeros(len(per_sample), rows, width, dtype=torch.bool)
    w = torch.zeros(len(per_sample), rows, dtype=torch.float64)
    for b, (zb, wb) in enumerate(per_sample):
        z[b, :len(wb), :zb.shape[1]] = zb
        w[b, :len(wb)] = wb
    return z.to(device), w.to(device)


def kernel_shap(model: Callable[[Tensor], Tensor], inputs: Tensor, *, target: Target = None,
                features: FeaturesLike = None, background: Background = None,
                n_samples: int = 1000, seed: Seed = None, batch_size: int = 256,
                progress: Optional[bool] = None) -> Explanation:
    """Kernel SHAP (Lundberg and Lee 2017): the Shapley values of interpretable
    features, with background data for absent features (see :mod:`lrp.kernel_shap`).

    Parameters
    ----------
    model
        Any callable (e.g. an ``nn.Module`` in eval mode) mapping ``(rows, ...)`` to
        ``(rows, classes)``; only its outputs are used, without gradients.
    inputs
        The samples ``(batch, ...)`` (floating point, finite).
    target
        As in :func:`lrp.gradients.gradient`; ``k`` targets per sample share the
        model evaluations.
    features
        As in :func:`lrp.lime.lime`: ``None`` (each element for tabular inputs, an
        8-per-dimension grid otherwise), a :class:`lrp.features.Features` or an
        integer mask.
    background
        The values of absent features: ``None`` (zeros), a number, one sample, or
        ``N`` background samples ``(N, ...)`` (each coalition is evaluated with each
        of them: summarize large data sets first, e.g. with k-means).
    n_samples
        Budget of coalitions per sample (>= 1); all ``2^M - 2`` are used, and the
        values are exact, when that is not more.
    seed
        An int, a :class:`torch.Generator` or ``None`` (torch's global generator);
        samples draw in turn as described in :func:`shapley_coalitions`.
    batch_size
        Maximum number of inputs per forward pass.
    progress
        Progress bar over chunks (``None``: when there are several and stderr is a
        terminal).

    Returns
    -------
    Explanation
        ``relevance``: each feature's Shapley value, divided equally among its
        input elements, so that ``conservation()`` is ``f(x)_c - phi_0``;
        ``convergence``: the efficiency error ``sum(relevance) - (f(x)_c - phi_0)``
        (rounding only); ``surrogate.intercept`` is ``phi_0`` and
        ``surrogate.coefficients`` the Shapley values per feature.

    Examples
    --------
    ::

        from lrp.kernel_shap import kernel_shap

        e = kernel_shap(model, x, background=x_train[:50], n_samples=2048, seed=0)
        e.surrogate.coefficients  # (batch, features): Shapley values
    """
    check_inputs(inputs)
    check_class_target(target)
    batch_size = positive_int(batch_size, "batch_size")
    n = positive_int(n_samples, "n_samples")
    p = problem(model, inputs, target, features, background, seed, batch_size, "Kernel SHAP")
    x, output, t, feats, refs = p.x, p.output, p.target, p.features, p.references
    generator = p.generator

    dtype = solve_dtype(x.device)
    base = model_outputs(model, refs, batch_size).to(dtype).mean(0, keepdim=True)
    phi0 = pick(base.expand(x.shape[0], -1), t)
    own = pick(output, t).to(dtype)
    phi0, own = (phi0[:, None], own[:, None]) if t.dim() == 1 else (phi0, own)

    def fit_group(rows: slice, desc: str) -> Fitted:
        group = feats.select(rows)
        z, w = _coalitions(group.counts, n, generator, x.device)
        y = coalition_outputs(model, x[rows], group, z, refs, t[rows], batch_size, progress,
                              desc)
        return fit(z, y, w, group.active(), intercept=phi0[rows], total=own[rows] - phi0[rows])

    fitted = surrogate(p, *in_groups(fit_group, feats, min(n, 2 ** min(feats.width, 62)),
                                     "KernelSHAP"))
    relevance = feats.spread(fitted.coefficients)
    convergence = relevance.flatten(t.dim()).sum(-1).to(dtype) - (own - phi0).reshape(t.shape)
    return Explanation(relevance, output, t, "KernelSHAP", convergence=convergence.to(x.dtype),
                       surrogate=fitted)
