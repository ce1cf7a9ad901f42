"""The result every metric returns: :class:`Scores`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import Tensor


@dataclass
class Scores:
    """Per-sample scores of one metric, with its curves where it has curves.

    Attributes
    ----------
    metric
        Name of the metric, e.g. ``"AOPC-MoRF"``.
    scores
        One score per sample ``(batch,)``.
    higher_is_better
        The direction of the score.
    curves
        Per-sample curves ``(batch, steps)`` by name (e.g. ``"morf"``, ``"lerf"`` or one
        per similarity measure); empty for metrics without curves.
    steps
        The x axis of the curves ``(steps,)``: the fraction of features perturbed
        (perturbation metrics), the percentage removed (ROAD) or the number of
        randomized layers (randomization).
    labels
        Names of the curve points where they have names (randomization: the layers).
    """

    metric: str
    scores: Tensor
    higher_is_better: bool
    curves: Dict[str, Tensor] = field(default_factory=dict)
    steps: Optional[Tensor] = None
    labels: Optional[list] = None

    def mean(self) -> float:
        """Mean score over the samples (NaN scores left out)."""
        finite = self.scores[~torch.isnan(self.scores)]
        return float(finite.double().mean()) if finite.numel() else math.nan

    def sem(self) -> float:
        """Standard error of the mean: sample standard deviation / sqrt(n) (NaN left out)."""
        finite = self.scores[~torch.isnan(self.scores)].double()
        if finite.numel() < 2:
            return math.nan
        return float(finite.std(unbiased=True) / math.sqrt(finite.numel()))

    def __repr__(self) -> str:
        arrow = "higher" if self.higher_is_better else "lower"
        return (f"Scores({self.metric}: {self.mean():.4g} ± {self.sem():.2g} over "
                f"{self.scores.numel()} samples, {arrow} is better)")
