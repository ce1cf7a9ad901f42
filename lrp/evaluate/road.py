"""ROAD: RemOve And Debias (Rong et al. 2022), with noisy linear imputation.

For each percentage ``p``, the ``int(n * p / 100)`` most (MoRF) or least (LeRF)
relevant pixels of an image are removed and imputed from their neighbours: every
removed value ``v_i`` is the weighted mean of its eight neighbours (weight 1/6 for
the four direct neighbours, 1/12 for the diagonal ones; neighbours outside the image
do not count), where removed neighbours enter with their own imputed values.  This
is a sparse linear system ``sum_j w_ij (v_i - u_j) = 0`` over the removed pixels
(``u_j = v_j`` if removed, ``x_j`` if kept), the same for every channel; it is
symmetric positive definite whenever some pixel is kept and is solved here for the
whole batch at once by Jacobi-preconditioned conjugate gradients in float64 (the
matrix-vector product is a 3x3 convolution), to a relative residual of ``tol``.
Then Gaussian noise of standard deviation ``noise`` is added to the imputed values.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..batching import Seed, make_generator, randn_like
from ..targets import Target
from .explainers import Explainer, relevance_for
from .features import feature_relevance, ranks
from .outputs import perturbed_scores, prepare
from .result import Scores

__all__ = ["road", "noisy_linear_imputation"]

OUTPUTS = ("accuracy", "logit", "probability")


def _kernel(dtype, device) -> Tensor:
    d, s = 1 / 12, 1 / 6
    return torch.tensor([[d, s, d], [s, 0.0, s], [d, s, d]], dtype=dtype, device=device)[None, None]


def noisy_linear_imputation(inputs: Tensor, mask: Tensor, noise: float = 0.01,
                            generator: Seed = None, tol: float = 1e-10,
                            max_iter: Union[int, None] = None) -> Tensor:
    """Replace the pixels in ``mask`` by noisy linear imputation (see the module doc).

    Parameters
    ----------
    inputs
        Images ``(batch, C, H, W)``.
    mask
        ``(batch, H, W)`` boolean, True where a pixel is removed.
    noise
        Standard deviation of the Gaussian noise added to the imputed values.
    generator
        Seed or :class:`torch.Generator` for the noise.
    tol
        Relative residual at which conjugate gradients stop.
    max_iter
        Iteration limit (default: the number of pixels).

    Returns
    -------
    Tensor
        The imputed images, ``inputs``' shape, device and dtype.
    """
    if inputs.dim() != 4 or mask.shape != (inputs.shape[0],) + tuple(inputs.shape[2:]):
        raise ValueError(f"noisy linear imputation needs images (batch, C, H, W) and a mask "
                         f"(batch, H, W), got {tuple(inputs.shape)} and {tuple(mask.shape)}")
    if float(noise) < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    batch, channels, height, width = inputs.shape
    removed = mask.to(inputs.device, torch.bool)
    if removed.flatten(1).all(dim=1).any():
        raise ValueError("cannot impute an image with every pixel removed")
    x = inputs.detach().double()
    m = removed[:, None].double()
    kernel = _kernel(torch.float64, x.device)

    def neighbours(v: Tensor) -> Tensor:  # sum_j w_ij v_j per channel, zero outside
        flat = v.reshape(-1, 1, height, width)
        return F.conv2d(flat, kernel, padding=1).reshape(v.shape)

    diag = neighbours(torch.ones_like(m)) * m  # sum of the weights of existing neighbours
    b = neighbours(x * (1 - m)) * m

    def apply(v: Tensor) -> Tensor:
        return diag * v - neighbours(v * m) * m

    inv_diag = torch.where(m > 0, 1 / diag.clamp(min=1e-12), torch.zeros_like(diag))
    v = b * inv_diag  # start: each removed pixel from its kept neighbours only
    r = b - apply(v)
    z = r * inv_diag
    p = z.clone()
    rz = (r * z).sum(dim=(2, 3), keepdim=True)
    b_norm = b.flatten(2).norm(dim=2)[..., None, None].clamp(min=1e-300)
    for _ in range(max_iter or height * width):
        if bool(((r.flatten(2).norm(dim=2)[..., None, None] / b_norm) <= tol).all()):
            break
        ap = apply(p)
        alpha = rz / (p * ap).sum(dim=(2, 3), keepdim=True).clamp(min=1e-300)
        v = v + alpha * p
        r = r - alpha * ap
        z = r * inv_diag
        rz_new = (r * z).sum(dim=(2, 3), keepdim=True)
        p = z + (rz_new / rz.clamp(min=1e-300)) * p
        rz = rz_new
    imputed = v.to(inputs.dtype)
    if noise:
        imputed = imputed + float(noise) * randn_like(inputs.shape, make_generator(generator), inputs)
    return torch.where(removed[:, None], imputed, inputs.detach())


def road(model: nn.Module, inputs: Tensor, explanation: Explainer, target: Target = None, *,
         percentages: Sequence[float] = tuple(range(10, 100, 10)), order: str = "morf",
         noise: float = 0.01, output: str = "accuracy", generator: Seed = None,
         batch_size: int = 256, progress: Union[bool, None] = None) -> Scores:
    """ROAD: the explained output after removing the top (MoRF) or bottom (LeRF) ``p`` %
    of pixels by noisy linear imputation.

    Parameters
    ----------
    model, inputs, explanation, target
        As in :func:`lrp.evaluate.pixel_flipping`; the inputs are images
        ``(batch, C, H, W)``.
    percentages
        Percentages of pixels removed, each in ``(0, 100)``; ``int(H * W * p / 100)``
        pixels each (default 10, 20, ..., 90 as in Rong et al.).
    order
        ``"morf"`` or ``"lerf"``.
    noise
        Standard deviation of the noise added to the imputed values (input units).
    output
        ``"accuracy"`` (is the target still the predicted class: ROAD's measure),
        ``"logit"`` or ``"probability"`` of the target.
    generator
        Seed or :class:`torch.Generator` for the noise.
    batch_size, progress
        As in :func:`lrp.evaluate.pixel_flipping`.

    Returns
    -------
    Scores
        ``scores``: the mean of the curve over the percentages (lower is better for
        MoRF, higher for LeRF); ``curves[order]``: ``(batch, len(percentages))``;
        ``steps``: the percentages.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    x, _, t, batch_size = prepare(model, inputs, target, batch_size)
    if x.dim() != 4:
        raise ValueError(f"ROAD needs images (batch, C, H, W), got shape {tuple(x.shape)}")
    relevance = relevance_for(explanation, model, x, t)
    fmap = feature_relevance(relevance, x)
    n = fmap[0].numel()
    percentages = [float(p) for p in percentages]
    if not percentages or any(not 0 < p < 100 for p in percentages):
        raise ValueError(f"percentages must be in (0, 100), got {percentages}")
    counts = [int(n * p / 100) for p in percentages]
    rank = ranks(fmap.flatten(1), order).reshape(fmap.shape)
    gen = make_generator(generator)

    def make_pass(p: int) -> Tensor:
        return noisy_linear_imputation(x, rank < counts[p], noise, gen)

    curve = perturbed_scores(model, make_pass, len(counts), t, softmax=output == "probability",
                             batch_size=batch_size, progress=progress, desc=f"ROAD ({order})",
                             predicted=output == "accuracy")
    name = f"ROAD-{'MoRF' if order == 'morf' else 'LeRF'}"
    return Scores(name, curve.mean(dim=1), order == "lerf", {order: curve},
                  torch.tensor(percentages, dtype=torch.float64))
