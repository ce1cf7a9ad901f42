"""ROAD: RemOve And Debias (Rong et al. 2022).

For each percentage ``p``, the ``int(n * p / 100)`` most (MoRF) or least (LeRF)
relevant pixels of an image are removed and imputed from their neighbours by noisy
linear imputation (:mod:`lrp.evaluate.imputation`), and the explained output (by
default: whether the prediction is still the target) is recorded.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn

from ..batching import Seed, make_generator
from ..targets import Target
from .explainers import Explainer, relevance_for
from .features import feature_relevance, ranks
from .imputation import noisy_linear_imputation
from .outputs import perturbed_scores, prepare
from .result import Scores

__all__ = ["road"]

OUTPUTS = ("accuracy", "logit", "probability")


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
