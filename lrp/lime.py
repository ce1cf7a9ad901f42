"""LIME: Local Interpretable Model-agnostic Explanations (Ribeiro et al. 2016).

LIME explains the prediction ``f(x)_c`` by a linear model that imitates ``f`` near
``x``.  With ``M`` interpretable features (:mod:`lrp.features`: the raw features of
a table, grid cells or superpixels of an image, or a mask of your own) and
coalitions ``z`` in ``{0, 1}^M`` of present features:

1. draw ``n_samples - 1`` coalitions, every feature present independently with
   probability 1/2, and add ``z = 1`` (the sample itself);
2. evaluate ``f_x(z) = 1/N sum_j f(h(x, z, r_j))_c``, where absent features take
   the values of the reference samples ``r_1 .. r_N`` (``background``; zeros by
   default);
3. weight each coalition by the exponential kernel
   ``pi_x(z) = exp(-D(z)^2 / (2 sigma^2))``, ``sigma = kernel_width``, with ``D``
   the distance of ``z`` to the full coalition ``1``: ``"cosine"``:
   ``D = 1 - sqrt(|z| / M)`` (one minus the cosine of the angle between ``z`` and
   ``1``, as the lime package does for images), ``"euclidean"``:
   ``D = sqrt((M - |z|) / M)`` (``||1 - z|| / sqrt(M)``);
4. optionally keep ``K = n_features`` features (*feature selection*);
5. fit ``g(z) = b + sum_i c_i z_i`` by weighted ridge regression,
   ``min sum_z pi_x(z) (f_x(z) - g(z))^2 + alpha sum_i c_i^2``.

The relevance of feature ``i`` is ``c_i``, divided equally among its input
elements (:meth:`lrp.features.Features.spread`); ``Explanation.surrogate`` holds
the coefficients, intercepts and the weighted ``R^2`` of each fit.

Ribeiro et al. write the kernel as ``exp(-D^2 / sigma^2)``; the Gaussian form used
here (as in the lime package and Captum) makes ``kernel_width`` its standard
deviation.  On a model that is linear in the features (e.g. a linear model on
tabular data with one reference sample) ``f_x`` is exactly linear in ``z``, and with
``alpha = 0`` LIME recovers its coefficients ``w_i (x_i - r_i)``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from .batching import Seed, positive_int
from .explanation import Explanation
from .features import FeaturesLike
from .surrogate import (Background, Fitted, coalition_outputs, fit, in_groups, problem,
                        solve_symmetric, surrogate)
from .targets import Target, check_class_target, check_inputs, pick

__all__ = ["DISTANCES", "SELECTIONS", "lime"]

#: Distances of a coalition to the full coalition.
DISTANCES = ("cosine", "euclidean")
#: Feature selection methods.
SELECTIONS = ("auto", "forward", "highest_weights", "none")


def _nonnegative(value, name: str, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, "
                         f"got {value!r}")
    return v


def draw_coalitions(counts: Tensor, n: int, generator: Optional[torch.Generator],
                    device: torch.device) -> Tensor:
    """LIME's coalitions: ``(batch, n, width)`` bool, row 0 the full coalition, the
    others Bernoulli(1/2) per feature.  Sample ``b`` draws
    ``torch.rand(n - 1, counts[b])`` from ``generator`` (on its device), in order."""
    width = int(counts.max())
    z = torch.zeros(len(counts), n, width, dtype=torch.bool, device=device)
    source = generator.device if generator is not None else device
    for b, m in enumerate(counts.tolist()):
        z[b, 0, :m] = True
        z[b, 1:, :m] = (torch.rand(n - 1, m, generator=generator, device=source) < 0.5).to(device)
    return z


def kernel(z: Tensor, counts: Tensor, distance: str, kernel_width: float) -> Tensor:
    """The weights ``pi_x(z)`` of coalitions ``z`` ``(batch, n, width)``."""
    present = z.sum(-1).to(torch.float64)
    m = counts.to(torch.float64)[:, None]
    if distance == "cosine":
        d = 1 - torch.sqrt(present / m)
    else:
        d = torch.sqrt((m - present) / m)
    return torch.exp(-d ** 2 / (2 * kernel_width ** 2))


def _highest_weights(z: Tensor, y: Tensor, w: Tensor, active: Tensor, k: int,
                     alpha: float) -> Tensor:
    coef, _, _ = fit(z, y, w, active, alpha=alpha)
    magnitude = coef.abs().masked_fill(~active[:, None], -1.0)
    top = magnitude.topk(k, dim=-1).indices
    return torch.zeros_like(magnitude, dtype=torch.bool).scatter_(-1, top, True) & active[:, None]


def _forward(z: Tensor, y: Tensor, w: Tensor, active: Tensor, k: int, alpha: float) -> Tensor:
    """Greedy forward selection: add the feature that lowers the weighted squared
    error of the ridge fit most, ``k`` times (all candidates of a step at once)."""
    dtype = y.dtype
    z = z.to(dtype)
    w_sum = w.sum(1, keepdim=True)
    wn = (w / w_sum)[..., None]
    zc = z - (wn * z).sum(1, keepdim=True)
    yc = y - (wn * y).sum(1, keepdim=True)
    gram = (wn * zc).transpose(1, 2) @ zc
    rhs = (wn * zc).transpose(1, 2) @ yc
    ridge = alpha / w_sum[:, 0]
    chosen = torch.zeros(y.shape[0], y.shape[2], z.shape[2], dtype=torch.bool, device=z.device)
    for b in range(y.shape[0]):
        features = torch.nonzero(active[b])[:, 0]
        for c in range(y.shape[2]):
            picked: list[int] = []
            for _ in range(min(k, len(features))):
                taken = torch.tensor(picked, dtype=torch.long, device=z.device)
                candidates = features[~torch.isin(features, taken)]
                idx = torch.cat([taken.expand(len(candidates), -1), candidates[:, None]], 1)
                sub = gram[b][idx[:, :, None], idx[:, None, :]]
                r = rhs[b, idx, c]
                eye = torch.eye(idx.shape[1], dtype=dtype, device=z.device)
                beta = solve_symmetric(sub + ridge[b] * eye, r[..., None])
                # weighted squared error of the fit, up to the constant sum w yc^2
                error = (beta.transpose(1, 2) @ sub @ beta)[:, 0, 0] - 2 * (beta[..., 0] * r).sum(1)
                picked.append(int(candidates[error.argmin()]))
            chosen[b, c, picked] = True
    return chosen


def lime(model: Callable[[Tensor], Tensor], inputs: Tensor, *, target: Target = None,
         features: FeaturesLike = None, background: Background = None,
         n_samples: int = 1000, kernel_width: float = 0.25, distance: str = "cosine",
         alpha: float = 1.0, n_features: Optional[int] = None, selection: str = "auto",
         seed: Seed = None, batch_size: int = 256,
         progress: Optional[bool] = None) -> Explanation:
    """LIME (Ribeiro et al. 2016): a weighted linear surrogate on interpretable
    features (see :mod:`lrp.lime` for the formulas).

    Parameters
    ----------
    model
        Any callable (e.g. an ``nn.Module`` in eval mode) mapping ``(rows, ...)`` to
        ``(rows, classes)``; only its outputs are used, without gradients.
    inputs
        The samples ``(batch, ...)`` (floating point, finite).
    target
        As in :func:`lrp.gradients.gradient`: ``None`` (predicted class), an int, one
        class per sample, or a ``(batch, k)`` tensor (the ``k`` fits share the model
        evaluations).
    features
        The interpretable features: ``None`` (each element for ``(batch, features)``
        inputs, an 8-per-dimension grid otherwise), a :class:`lrp.features.Features`
        (e.g. :func:`lrp.features.superpixels`) or an integer mask (see
        :func:`lrp.features.from_mask`).
    background
        The values of absent features: ``None`` (zeros), a number, one sample, or
        ``N`` samples ``(N, ...)`` whose outputs are averaged (``N`` evaluations per
        coalition).
    n_samples
        Coalitions per sample, the sample itself included (>= 2).
    kernel_width
        ``sigma`` of the kernel (> 0); 0.25 is the lime package's default for images.
    distance
        ``"cosine"`` (default) or ``"euclidean"``.
    alpha
        Ridge penalty (>= 0; 1 as in the lime package; 0: weighted least squares).
    n_features
        Keep only this many features in the surrogate (``None``: all).
    selection
        How to choose them: ``"forward"`` (greedy forward selection by weighted
        squared error), ``"highest_weights"`` (largest ``|c_i|`` of the fit on all
        features, then refit), ``"auto"`` (forward for ``n_features <= 6``, else
        highest weights, as the lime package), ``"none"``.  Chosen per sample and
        target.
    seed
        An int, a :class:`torch.Generator` or ``None`` (torch's global generator).
        Sample ``b`` draws ``torch.rand(n_samples - 1, M_b)`` in turn, so results do
        not depend on ``batch_size``.
    batch_size
        Maximum number of inputs per forward pass.
    progress
        Progress bar over chunks (``None``: when there are several and stderr is a
        terminal).

    Returns
    -------
    Explanation
        ``relevance`` is input-shaped (``(batch, k, ...)`` for ``k`` targets);
        ``surrogate`` holds the fitted models.

    Examples
    --------
    ::

        from lrp.lime import lime
        from lrp.features import superpixels

        e = lime(model, images, features=superpixels(images, 50), n_samples=1000, seed=0)
        e.surrogate.coefficients  # (batch, superpixels)
    """
    check_inputs(inputs)
    check_class_target(target)
    batch_size = positive_int(batch_size, "batch_size")
    n = positive_int(n_samples, "n_samples")
    if n < 2:
        raise ValueError(f"n_samples must be >= 2 (the sample itself and one coalition), got {n}")
    width = _nonnegative(kernel_width, "kernel_width", positive=True)
    alpha = _nonnegative(alpha, "alpha")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if n_features is not None:
        n_features = positive_int(n_features, "n_features")
    p = problem(model, inputs, target, features, background, seed, batch_size, "LIME")
    x, output, t, feats, refs = p.x, p.output, p.target, p.features, p.references
    generator = p.generator

    how = selection
    if how == "auto":
        how = "forward" if n_features is not None and n_features <= 6 else "highest_weights"

    def fit_group(rows: slice, desc: str) -> Fitted:
        group, tg = feats.select(rows), t[rows]
        z = draw_coalitions(group.counts, n, generator, x.device)
        y = coalition_outputs(model, x[rows], group, z[:, 1:], refs, tg, batch_size, progress,
                              desc)
        own = pick(output[rows], tg).to(y.dtype)
        y = torch.cat([(own[:, None] if tg.dim() == 1 else own)[:, None], y], 1)
        w = kernel(z, group.counts, distance, width).to(device=x.device, dtype=y.dtype)
        active = group.active()
        if n_features is None or how == "none" or n_features >= group.width:
            return fit(z, y, w, active, alpha=alpha)
        pick_features = _forward if how == "forward" else _highest_weights
        chosen = pick_features(z, y, w, active, n_features, alpha)  # (g, k, width)
        g, k = y.shape[0], y.shape[2]
        coef, intercept, score = fit(
            z.repeat_interleave(k, 0), y.transpose(1, 2).reshape(g * k, -1, 1),
            w.repeat_interleave(k, 0), chosen.reshape(g * k, -1), alpha=alpha)
        return coef.reshape(g, k, -1), intercept.reshape(g, k), score.reshape(g, k)

    fitted = surrogate(p, *in_groups(fit_group, feats, n, "LIME"))
    return Explanation(feats.spread(fitted.coefficients), output, t, "LIME", surrogate=fitted)
