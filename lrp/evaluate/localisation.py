"""Localisation against ground-truth masks: relevance mass accuracy, relevance rank
accuracy (Arras et al. 2022) and the pointing game (Zhang et al. 2018).

Masks mark the features (pixels) where the evidence lies, one mask per sample:
``(batch, *spatial)``, ``(batch, 1, *spatial)`` or input-shaped (a feature counts if
any of its channels is marked).  With ``R`` the relevance per feature (summed over
channels) and ``M`` the mask:

* relevance mass accuracy ``sum(R * M) / sum(R)``;
* relevance rank accuracy ``|top_K(R) ∩ M| / K`` with ``K = |M|``;
* pointing game: 1 if the feature of largest relevance lies in ``M``, else 0.

``part`` picks the relevance used: ``"positive"`` (``max(R, 0)``, as Arras et al.),
``"absolute"`` or ``"signed"``.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from ..targets import Target
from .explainers import Explainer, feature_map
from .features import spatial_shape
from .result import Scores

__all__ = ["relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game"]

PARTS = ("positive", "absolute", "signed")


def _masks(masks: Tensor, x: Tensor) -> Tensor:
    """Masks as boolean ``(batch, n_features)``."""
    masks = torch.as_tensor(masks, device=x.device)
    spatial = spatial_shape(x)
    batch = x.shape[0]
    shape = tuple(masks.shape)
    if shape == (batch,) + spatial:
        flat = masks
    elif x.dim() >= 3 and shape in ((batch, 1) + spatial, tuple(x.shape)):
        flat = masks.bool().any(dim=1) if masks.dtype == torch.bool else (masks != 0).any(dim=1)
    else:
        options = [(batch,) + spatial] + ([(batch, 1) + spatial, tuple(x.shape)] if x.dim() >= 3 else [])
        raise ValueError(f"masks of shape {shape} do not fit inputs of shape {tuple(x.shape)}; "
                         f"expected one of {', '.join(str(o) for o in options)}")
    flat = flat.reshape(batch, -1)
    if flat.dtype != torch.bool:
        if not ((flat == 0) | (flat == 1)).all():
            raise ValueError("masks must be boolean or hold only 0 and 1")
        flat = flat == 1
    empty = (~flat.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"the masks of samples {empty[:10]} mark no feature")
    return flat


def _part(relevance: Tensor, part: str) -> Tensor:
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if part == "positive":
        return relevance.clamp(min=0)
    return relevance.abs() if part == "absolute" else relevance


def _inputs(model, inputs, explanation, target, masks, part):
    r = _part(feature_map(model, inputs, explanation, target), part)
    return r, _masks(masks, inputs)


def relevance_mass_accuracy(model: Union[nn.Module, None], inputs: Tensor, explanation: Explainer,
                            target: Target = None, *, masks: Tensor,
                            part: str = "positive") -> Scores:
    """Share of the relevance inside the mask, ``sum(R * M) / sum(R)`` (NaN where
    ``sum(R) = 0``).

    Parameters
    ----------
    model
        The model (may be ``None`` when ``explanation`` is a relevance tensor).
    inputs, explanation, target
        As in :func:`lrp.evaluate.pixel_flipping`.
    masks
        Ground truth per sample (see the module doc).
    part
        ``"positive"``, ``"absolute"`` or ``"signed"`` relevance.

    Returns
    -------
    Scores
        Higher is better.
    """
    r, m = _inputs(model, inputs, explanation, target, masks, part)
    total = r.sum(dim=1)
    inside = (r * m).sum(dim=1)
    scores = torch.where(total != 0, inside / total, torch.full_like(total, float("nan")))
    return Scores("RelevanceMassAccuracy", scores, True)


def relevance_rank_accuracy(model: Union[nn.Module, None], inputs: Tensor, explanation: Explainer,
                            target: Target = None, *, masks: Tensor,
                            part: str = "positive") -> Scores:
    """Share of the ``K = |M|`` most relevant features that lie in the mask (ties:
    the earlier feature first).  Parameters as in :func:`relevance_mass_accuracy`.

    Returns
    -------
    Scores
        Higher is better.
    """
    r, m = _inputs(model, inputs, explanation, target, masks, part)
    order = torch.argsort(-r, dim=1, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(r.shape[1], device=r.device).expand_as(order))
    k = m.sum(dim=1, keepdim=True)
    hits = ((position < k) & m).sum(dim=1)
    return Scores("RelevanceRankAccuracy", hits.to(r.dtype) / k[:, 0].to(r.dtype), True)


def pointing_game(model: Union[nn.Module, None], inputs: Tensor, explanation: Explainer,
                  target: Target = None, *, masks: Tensor, part: str = "signed") -> Scores:
    """1 where the most relevant feature lies in the mask, else 0 (ties: the first).
    Parameters as in :func:`relevance_mass_accuracy`.

    Returns
    -------
    Scores
        Higher is better.
    """
    r, m = _inputs(model, inputs, explanation, target, masks, part)
    top = r.argmax(dim=1, keepdim=True)
    return Scores("PointingGame", m.gather(1, top)[:, 0].to(r.dtype), True)
