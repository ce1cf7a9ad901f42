"""Robustness: max-sensitivity (Yeh et al. 2019).

For ``samples`` perturbations ``delta`` drawn uniformly from the L-infinity ball of
``radius`` (each element independently in ``[-radius, radius]``), the largest change
of the explanation, relative to its size:
``max_j ||E(x + delta_j) - E(x)|| / ||E(x)||`` (Frobenius norms over the whole
relevance; ``relative=False``: without the division).  The explained class stays the
target of ``x``.  Lower is better.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from ..batching import Seed, make_generator, positive_int, rand_like, run_chunked
from ..targets import Target
from .explainers import Explainer, explain_batched, explain_with
from .outputs import prepare
from .randomization import _need_method
from .result import Scores

__all__ = ["max_sensitivity"]


def max_sensitivity(model: nn.Module, inputs: Tensor, explanation: Explainer,
                    target: Target = None, *, radius: float = 0.2, samples: int = 10,
                    relative: bool = True, generator: Seed = None, batch_size: int = 64,
                    progress: Union[bool, None] = None) -> Scores:
    """Max-sensitivity per sample (see the module doc).

    Parameters
    ----------
    model, inputs, target, batch_size, progress
        As in :func:`lrp.evaluate.pixel_flipping`; ``batch_size`` bounds the inputs
        explained at once.
    explanation
        An lrp composite or a method.
    radius
        Half-width of the uniform noise, in input units.
    samples
        Number of perturbations per sample.
    relative
        Divide by ``||E(x)||`` (NaN where it is 0).
    generator
        Seed or :class:`torch.Generator` for the noise.

    Returns
    -------
    Scores
    """
    _need_method(explanation, "max-sensitivity")
    radius = float(radius)
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    samples = positive_int(samples, "samples")
    x, _, t, batch_size = prepare(model, inputs, target, batch_size)
    gen = make_generator(generator)
    reference = explain_batched(explanation, model, x, t, batch_size).flatten(1)
    largest = torch.zeros(x.shape[0], dtype=reference.dtype, device=x.device)

    def make_pass(p: int) -> Tensor:
        return x + radius * (2 * rand_like(x.shape, gen, x) - 1)

    def evaluate(rows: Tensor, targets: Tensor) -> Tensor:
        return explain_with(explanation, model, rows, targets)

    def consume(p: int, a: int, b: int, values: Tensor) -> None:
        change = (values.flatten(1) - reference[a:b]).norm(dim=1)
        largest[a:b] = torch.maximum(largest[a:b], change)

    run_chunked(make_pass, samples, t, evaluate, consume, batch_size, progress,
                "max-sensitivity")
    if relative:
        size = reference.norm(dim=1)
        largest = torch.where(size > 0, largest / size, torch.full_like(size, float("nan")))
    return Scores("MaxSensitivity", largest, False)
