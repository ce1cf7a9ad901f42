"""What LIME and Kernel SHAP share: the model evaluated on coalitions of
interpretable features, and a weighted linear model fitted to those outputs.

Both methods explain sample ``x`` by a linear model ``g(z) = b + sum_i w_i z_i`` over
coalitions ``z`` in ``{0, 1}^M`` of its interpretable features
(:mod:`lrp.features`).  They differ only in which coalitions they draw, how they
weight them and how they constrain the fit (:mod:`lrp.lime`,
:mod:`lrp.kernel_shap`).  Here:

* :func:`references` -- the values of absent features: one reference sample or a
  background data set of ``N`` samples;
* :func:`coalition_outputs` -- ``f_x(z) = 1/N sum_j f(h(x, z, r_j))`` for every
  coalition of every sample, streamed through the model in chunks of at most
  ``batch_size`` inputs (:func:`lrp.batching.run_chunked`), without gradients;
* :func:`fit` -- the weighted least-squares fit, solved in torch (float64 except on
  devices without it), optionally with a ridge penalty and with the efficiency
  constraint of Kernel SHAP;
* :func:`in_groups` -- the samples in groups, so that the coalition matrices and
  the fit of one group stay within :data:`GROUP_ENTRIES` entries;
* :class:`Surrogate` -- the fitted models, kept on the :class:`lrp.Explanation`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from .attach import classifier_output, run_model
from .batching import run_chunked
from .features import Features

__all__ = ["GROUP_ENTRIES", "Surrogate", "Problem", "coalition_outputs", "fit", "in_groups",
           "problem", "references", "solve_symmetric", "surrogate"]

Background = Union[None, float, Tensor]
Fitted = Tuple[Tensor, Tensor, Tensor]

#: Samples x coalitions x features handled at once (the coalition matrices and, in
#: float64, the fit: 64 MiB); larger batches are explained in groups of samples.
GROUP_ENTRIES = 1 << 23


@dataclass
class Surrogate:
    """The linear models a model-agnostic method fitted, one per sample (and target).

    Attributes
    ----------
    features
        The interpretable features of each sample.
    coefficients
        ``(batch, width)`` or ``(batch, k, width)``: the weight of each feature
        (LIME's coefficients, Kernel SHAP's Shapley values); zero in the padding
        columns of samples with fewer features (see :attr:`Features.counts`) and,
        for LIME with feature selection, for the features not selected.
    intercept
        ``(batch,)`` or ``(batch, k)``: the model's value with no feature present
        (for Kernel SHAP the expected output over the background, ``phi_0``).
    score
        ``(batch,)`` or ``(batch, k)``: the weighted coefficient of determination
        ``R^2`` of the fit on the evaluated coalitions (1 for a model that is
        exactly linear in the features).
    """

    features: Features
    coefficients: Tensor
    intercept: Tensor
    score: Tensor


@dataclass
class Problem:
    """What LIME and Kernel SHAP start from: the detached inputs, the model's outputs
    on them, the resolved targets, the interpretable features, the references of
    absent features and the random generator."""

    x: Tensor
    output: Tensor
    target: Tensor
    features: Features
    references: Tensor
    generator: torch.Generator


def problem(model: Callable[[Tensor], Tensor], inputs: Tensor, target, features,
            background: Background, seed, batch_size: int, method: str) -> Problem:
    """The :class:`Problem` of explaining ``inputs`` (``method`` names the caller in
    errors); inputs, target and batch size are checked by the caller first."""
    from .batching import make_generator, model_outputs
    from .features import check_counts, resolve
    from .targets import resolve_target
    generator = make_generator(seed)
    x = inputs.detach()
    output = model_outputs(model, x, batch_size)
    t = resolve_target(target, output)
    feats = resolve(features, x)
    check_counts(feats, 1, method)
    return Problem(x, output, t, feats, references(background, x), generator)


def surrogate(p: Problem, coef: Tensor, intercept: Tensor, score: Tensor) -> Surrogate:
    """The fitted models in the inputs' dtype, without the target dimension for one
    target per sample."""
    if p.target.dim() == 1:
        coef, intercept, score = coef[:, 0], intercept[:, 0], score[:, 0]
    dtype = p.x.dtype
    return Surrogate(p.features, coef.to(dtype), intercept.to(dtype), score.to(dtype))


def references(background: Background, x: Tensor) -> Tensor:
    """The reference samples ``(N, *sample_shape)`` that absent features come from.

    ``None``: one sample of zeros; a number: one constant sample; a tensor of the
    sample shape: that sample; ``(N, *sample_shape)``: ``N`` background samples.
    """
    if background is None:
        return torch.zeros_like(x[:1])
    if isinstance(background, Tensor):
        r = background.detach().to(device=x.device, dtype=x.dtype)
        if r.shape == x.shape[1:]:
            r = r.unsqueeze(0)
        if r.dim() != x.dim() or r.shape[1:] != x.shape[1:] or r.shape[0] < 1:
            raise ValueError(f"background must be one sample {tuple(x.shape[1:])} or N >= 1 "
                             f"samples (N, {', '.join(map(str, x.shape[1:]))}), got shape "
                             f"{tuple(background.shape)}")
    else:
        try:
            r = torch.full_like(x[:1], float(background))
        except (TypeError, ValueError):
            raise TypeError(f"background must be None, a number or a tensor, got "
                            f"{type(background).__name__}") from None
    if not torch.isfinite(r).all():
        raise ValueError("background contains NaN or infinite values")
    return r


def in_groups(fit_group: Callable[[slice, str], Fitted], features: Features, coalitions: int,
              desc: str) -> Fitted:
    """Run ``fit_group(rows, desc)`` on groups of samples and join the results.

    A group holds at most ``GROUP_ENTRIES // (coalitions * width)`` samples (at least
    one); ``fit_group`` returns coefficients ``(g, k, width_g)`` (padded here to the
    batch's width), intercepts and scores ``(g, k)``.  Samples draw their coalitions in
    turn, so the groups do not change the results.
    """
    batch, width = features.counts.shape[0], features.width
    size = max(1, GROUP_ENTRIES // max(1, coalitions * width))
    groups = [slice(a, min(batch, a + size)) for a in range(0, batch, size)]
    parts = []
    for i, rows in enumerate(groups):
        coef, intercept, score = fit_group(rows, desc if len(groups) == 1 else
                                           f"{desc} {i + 1}/{len(groups)}")
        parts.append((torch.nn.functional.pad(coef, (0, width - coef.shape[-1])), intercept,
                      score))
    return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]


def solve_dtype(device: torch.device) -> torch.dtype:
    """float64 for the regression, except where the device has none (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def coalition_outputs(model: Callable[[Tensor], Tensor], x: Tensor, features: Features,
                      coalitions: Tensor, refs: Tensor, t: Tensor, batch_size: int,
                      progress: Optional[bool], desc: str) -> Tensor:
    """The explained outputs on every coalition, averaged over the references.

    Parameters
    ----------
    model
        Maps ``(rows, *sample_shape)`` to ``(rows, classes)``.
    x
        The samples ``(batch, *sample_shape)``.
    features
        Their interpretable features.
    coalitions
        ``(batch, n, width)`` bool: ``n`` coalitions per sample.
    refs
        ``(N, *sample_shape)`` reference samples.
    t
        The explained classes ``(batch,)`` or ``(batch, k)``.
    batch_size, progress, desc
        Chunking and progress bar, as in :func:`lrp.batching.run_chunked`.

    Returns
    -------
    torch.Tensor
        ``(batch, n, k)`` (``k = 1`` for one class per sample) in the solver's dtype:
        ``1/N sum_j f(h(x, z, r_j))_t``.
    """
    n, n_refs = coalitions.shape[1], refs.shape[0]
    columns = t[:, None] if t.dim() == 1 else t
    out = torch.zeros(x.shape[0], n, columns.shape[1], dtype=solve_dtype(x.device),
                      device=x.device)

    def make_pass(p: int) -> Tensor:
        c, j = divmod(p, n_refs)
        return features.compose(x, coalitions[:, c], refs[j:j + 1])

    def evaluate(rows: Tensor, rows_t: Tensor) -> Tensor:
        with torch.no_grad():
            output = classifier_output(run_model(model, rows))
        return output.gather(1, rows_t[:, None] if rows_t.dim() == 1 else rows_t)

    def consume(p: int, a: int, b: int, values: Tensor) -> None:
        out[a:b, p // n_refs] += values.to(out.dtype)

    run_chunked(make_pass, n * n_refs, columns, evaluate, consume, batch_size, progress, desc)
    return out / n_refs


def solve_symmetric(a: Tensor, b: Tensor, singular: Optional[Tensor] = None) -> Tensor:
    """The solution of the symmetric systems ``a x = b`` (batched); for singular ones
    the minimum-norm least-squares solution ``a^+ b``.

    LU first (fast); the pseudo-inverse (SVD, slower) for the systems flagged
    ``singular`` by the caller and for those where LU fails or leaves a residual
    above ``1e-8`` of ``|b|`` (float64; ``1e-4`` in float32)."""
    x, info = torch.linalg.solve_ex(a, b)
    tol = 1e-8 if a.dtype == torch.float64 else 1e-4
    residual = (a @ x - b).flatten(1).norm(dim=1)
    scale = b.flatten(1).norm(dim=1) + a.flatten(1).norm(dim=1) * torch.finfo(a.dtype).eps
    bad = (info != 0) | ~torch.isfinite(x).flatten(1).all(1) | (residual > tol * scale)
    if singular is not None:
        bad |= singular
    if bool(bad.any()):
        x = x.clone()
        x[bad] = torch.linalg.pinv(a[bad]) @ b[bad]
    return x


def fit(z: Tensor, y: Tensor, weights: Tensor, active: Tensor, *, alpha: float = 0.0,
        intercept: Optional[Tensor] = None, total: Optional[Tensor] = None
        ) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted least squares ``min sum_i w_i (y_i - b - z_i . c)^2 + alpha |c|^2``.

    Solved per sample and target from the normal equations.  With ``intercept=None``
    the intercept ``b`` is fitted (unpenalized: the data are centred with the
    weights); otherwise it is fixed.  With ``total`` the coefficients are
    constrained to ``sum_i c_i = total`` (Lagrange multiplier).

    Parameters
    ----------
    z
        ``(batch, n, width)`` coalitions (0/1).
    y
        ``(batch, n, k)`` outputs.
    weights
        ``(batch, n)`` non-negative weights.
    active
        ``(batch, width)`` bool: the columns in the model; the others get 0.
    alpha
        Ridge penalty (relative to the weights as given: scaling the weights by
        ``s`` and ``alpha`` by ``s`` gives the same fit).
    intercept
        ``(batch, k)`` fixed intercepts, or ``None`` to fit them.
    total
        ``(batch, k)`` constraint on the sum of the coefficients, or ``None``.

    Returns
    -------
    coefficients : torch.Tensor
        ``(batch, k, width)``.
    intercept : torch.Tensor
        ``(batch, k)``.
    score : torch.Tensor
        ``(batch, k)``: the weighted ``R^2`` on the ``n`` coalitions.
    """
    dtype = y.dtype
    act = active.to(dtype)
    z = z.to(dtype) * act[:, None]
    w = weights.to(dtype)
    w_sum = w.sum(1, keepdim=True).clamp(min=torch.finfo(dtype).tiny)
    w = w / w_sum  # well-scaled normal equations; alpha scaled along
    ridge = alpha / w_sum
    if intercept is None:
        z_mean = (w[..., None] * z).sum(1, keepdim=True)
        y_mean = (w[..., None] * y).sum(1, keepdim=True)
        zc, yc = z - z_mean, y - y_mean
    else:
        zc, yc = z, y - intercept[:, None]
    wz = w[..., None] * zc
    gram = wz.transpose(1, 2) @ zc
    # singular normal equations: fewer weighted coalitions than unknowns, or a
    # feature that does not vary over them (then the minimum-norm solution)
    spread_z = torch.diagonal(gram, dim1=1, dim2=2)
    rows = (w > 0).sum(1)
    singular = (rows < act.sum(1) + (1 if intercept is None else 0)) | \
        ((spread_z <= 1e-12) & active).any(1)
    singular &= alpha == 0
    gram = gram + torch.diag_embed(ridge * act + (1 - act))
    rhs = wz.transpose(1, 2) @ yc
    if total is not None:
        width = gram.shape[-1]
        kkt = gram.new_zeros(gram.shape[0], width + 1, width + 1)
        kkt[:, :width, :width] = gram
        kkt[:, :width, width] = act
        kkt[:, width, :width] = act
        coef = solve_symmetric(kkt, torch.cat([rhs, total[:, None].to(dtype)], 1),
                               singular)[:, :width]
    else:
        coef = solve_symmetric(gram, rhs, singular)
    coef = coef * act[..., None]
    if intercept is None:
        intercept = (y_mean - z_mean @ coef)[:, 0]
    residual = y - intercept[:, None] - z @ coef
    spread = y - (w[..., None] * y).sum(1, keepdim=True)
    sse = (w[..., None] * residual ** 2).sum(1)
    sst = (w[..., None] * spread ** 2).sum(1)
    score = torch.where(sst > 0, 1 - sse / sst.clamp(min=torch.finfo(dtype).tiny),
                        (sse <= 0).to(dtype))
    return coef.transpose(1, 2), intercept, score
