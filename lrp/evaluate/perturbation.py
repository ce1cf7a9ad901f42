"""Pixel-flipping and region perturbation (Bach et al. 2015; Samek et al. 2017): AOPC
and ABPC.

The input's features are grouped into patches of ``patch_size`` (1: single pixels,
pixel-flipping; larger: region perturbation) and ordered by their summed relevance,
most relevant first (MoRF) or least relevant first (LeRF).  Step ``k = 0..L``
replaces the first ``min(k * patches_per_step, n_patches)`` patches with the fill,
cumulatively, and records the explained output ``f(x^k)``; ``x^0 = x``.

* ``AOPC = 1/(L+1) sum_{k=0..L} (f(x^0) - f(x^k))`` per sample (higher is better for
  MoRF, lower for LeRF);
* ``ABPC = AOPC_MoRF - AOPC_LeRF = 1/(L+1) sum_k (f(x^k_LeRF) - f(x^k_MoRF))``, the
  area between the two curves (higher is better).
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..batching import Seed, make_generator, positive_int
from ..targets import Target
from .explainers import Explainer, relevance_for
from .features import (Fill, expand_patches, feature_mask, feature_relevance, fill_values,
                       patch_sizes, patch_sums, ranks, spatial_shape)
from .outputs import perturbed_scores, prepare, score
from .result import Scores

__all__ = ["pixel_flipping", "abpc", "aopc"]


def aopc(curve: Tensor) -> Tensor:
    """``1/(L+1) sum_{k=0..L} (curve[:, 0] - curve[:, k])`` per row of ``(batch, L+1)``."""
    return (curve[:, :1] - curve).mean(dim=1)


def _schedule(n_patches: int, patches_per_step: int, steps) -> Tensor:
    """How many patches are perturbed at steps ``0..L``."""
    per_step = positive_int(patches_per_step, "patches_per_step")
    if per_step > n_patches:
        raise ValueError(f"patches_per_step={per_step} is larger than the number of patches "
                         f"({n_patches})")
    most = math.ceil(n_patches / per_step)
    steps = most if steps is None else positive_int(steps, "steps")
    if steps > most:
        raise ValueError(f"{steps} steps of {per_step} patches perturb more than the "
                         f"{n_patches} patches of the input (at most {most} steps)")
    return (torch.arange(steps + 1) * per_step).clamp(max=n_patches)


def _curves(model: nn.Module, inputs: Tensor, explanation: Explainer, target: Target,
            orders: Sequence[str], patch_size: Union[int, Sequence[int]], patches_per_step: int,
            steps, fill: Fill, softmax: bool, generator: Seed, batch_size: int, progress
            ) -> Tuple[Dict[str, Tensor], Tensor]:
    x, output, t, batch_size = prepare(model, inputs, target, batch_size)
    relevance = relevance_for(explanation, model, x, t)
    spatial = spatial_shape(x)
    sizes = patch_sizes(patch_size, spatial)
    relevance_of_patches = patch_sums(feature_relevance(relevance, x), sizes)
    n_patches = relevance_of_patches.shape[1]
    counts = _schedule(n_patches, patches_per_step, steps).tolist()
    values = fill_values(x, fill, make_generator(generator))
    start = score(output, t, softmax)
    curves = {}
    for order in orders:
        rank = feature_mask(expand_patches(ranks(relevance_of_patches, order), spatial, sizes), x)

        def make_pass(p: int, rank: Tensor = rank) -> Tensor:
            return torch.where(rank < counts[p + 1], values, x)

        perturbed = perturbed_scores(model, make_pass, len(counts) - 1, t, softmax=softmax,
                                     batch_size=batch_size, progress=progress,
                                     desc=f"perturbation ({order})")
        curves[order] = torch.cat([start[:, None], perturbed], dim=1)
    return curves, torch.tensor(counts, dtype=torch.float64) / n_patches


def pixel_flipping(model: nn.Module, inputs: Tensor, explanation: Explainer,
                   target: Target = None, *, order: str = "morf",
                   patch_size: Union[int, Sequence[int]] = 1, patches_per_step: int = 1,
                   steps: Union[int, None] = None, fill: Fill = "min",
                   softmax: bool = False, generator: Seed = None, batch_size: int = 256,
                   progress: Union[bool, None] = None) -> Scores:
    """Pixel-flipping / region perturbation: the perturbation curve and its AOPC.

    Parameters
    ----------
    model
        A classifier ``(batch, ...) -> (batch, classes)`` in eval mode (left unchanged).
    inputs
        The input batch.
    explanation
        Relevance (input-shaped or channel-reduced), an lrp composite or a method
        (see :mod:`lrp.evaluate.explainers`).
    target
        ``None`` (predicted class), an int, or one class per sample.
    order
        ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
    patch_size
        Side of the square (cubic) patches, or one size per spatial dimension; it
        must divide the input.  1 is pixel-flipping.
    patches_per_step
        Patches replaced per step.
    steps
        Number of steps ``L``; ``None``: until every patch is replaced (the last step
        may replace fewer).  At most ``ceil(n_patches / patches_per_step)``.
    fill
        What replaces a feature: ``"min"`` (the sample's minimum: black for images,
        Quantus' ``"black"``), ``"uniform"`` (noise in the sample's value range, as in
        Samek et al.), ``"blur"``, ``"mean"``, ``"zero"``, a number, a tensor or a
        callable (see :func:`lrp.evaluate.features.fill_values`).  Drawn
        once per sample, so MoRF and LeRF (and several methods, with the same
        ``generator`` seed) see the same replacement values.
    softmax
        Record the softmax probability of the target instead of its logit.
    generator
        Seed or :class:`torch.Generator` for random fills.
    batch_size
        Maximum number of perturbed inputs per forward pass.
    progress
        Progress bar; ``None``: when there are several chunks and stderr is a terminal.

    Returns
    -------
    Scores
        ``scores``: AOPC per sample; ``curves[order]``: ``f(x^k)``, ``(batch, L+1)``;
        ``steps``: the fraction of patches replaced at each step.
    """
    curves, fractions = _curves(model, inputs, explanation, target, (order,), patch_size,
                                patches_per_step, steps, fill, softmax, generator, batch_size,
                                progress)
    name = "AOPC-MoRF" if order == "morf" else "AOPC-LeRF"
    return Scores(name, aopc(curves[order]), order == "morf", curves, fractions)


def abpc(model: nn.Module, inputs: Tensor, explanation: Explainer, target: Target = None, *,
         patch_size: Union[int, Sequence[int]] = 1, patches_per_step: int = 1,
         steps: Union[int, None] = None, fill: Fill = "min", softmax: bool = False,
         generator: Seed = None, batch_size: int = 256,
         progress: Union[bool, None] = None) -> Scores:
    """Area between the LeRF and MoRF perturbation curves, ``AOPC_MoRF - AOPC_LeRF``.

    Both orders use the same fill values.  Parameters as in :func:`pixel_flipping`.

    Returns
    -------
    Scores
        ``scores``: ABPC per sample; ``curves["morf"]``, ``curves["lerf"]``.
    """
    curves, fractions = _curves(model, inputs, explanation, target, ("morf", "lerf"),
                                patch_size, patches_per_step, steps, fill, softmax, generator,
                                batch_size, progress)
    return Scores("ABPC", aopc(curves["morf"]) - aopc(curves["lerf"]), True, curves, fractions)
