"""Concept definitions: how the output of a layer is divided into concepts.

By default a concept is a channel of a convolution (dimension 1 of the layer output)
or a unit of a linear layer (:class:`ChannelConcept`).  :class:`MaskConcept` defines
concepts by arbitrary masks over the layer output, e.g. spatial regions.

A concept definition answers four questions about a layer whose per-sample output
shape is ``shape``: how many concepts there are, the mask of a set of concepts (their
union), and the relevance and activation of every concept given a relevance or
activation map.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Shape = tuple[int, ...]


class Concept:
    """Base class of concept definitions (see :mod:`lrp.crp.concepts`)."""

    def count(self, shape: Shape) -> int:
        """Number of concepts of a layer whose per-sample output shape is ``shape``."""
        raise NotImplementedError

    def mask(self, ids: Sequence[int], shape: Shape, like: Tensor) -> Tensor:
        """The union of concepts ``ids`` as a float mask broadcastable to ``shape``
        (on the device and with the dtype of ``like``)."""
        raise NotImplementedError

    def relevance(self, relevance: Tensor, shape: Shape) -> Tensor:
        """Relevance of every concept: ``(..., *shape)`` to ``(..., count)``."""
        raise NotImplementedError

    def activation(self, activation: Tensor, shape: Shape) -> Tensor:
        """Activation of every concept: ``(..., *shape)`` to ``(..., count)``."""
        raise NotImplementedError

    def key(self) -> str:
        """A string identifying the definition (part of cache keys)."""
        return repr(self)

    def check(self, ids: Sequence[int], shape: Shape, layer: str) -> None:
        """Raise a :class:`ValueError` naming ``layer`` if an id is out of range."""
        n = self.count(shape)
        bad = [int(i) for i in ids if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"concept id(s) {bad} out of range for layer {layer!r}: it has "
                             f"{n} concepts (0..{n - 1}), output shape {tuple(shape)} per sample")


class ChannelConcept(Concept):
    """Concept ``i`` is channel ``i``: dimension ``dim`` of the per-sample output.

    The relevance of a channel is the sum of its relevance map, its activation the
    maximum of its activation map.

    Parameters
    ----------
    dim
        The channel dimension of the per-sample output (default 0: ``(C, H, W)`` of
        a convolution, ``(units,)`` of a linear layer; use -1 for ``(tokens, units)``).
    """

    def __init__(self, dim: int = 0) -> None:
        self.dim = dim

    def __repr__(self) -> str:
        return f"ChannelConcept(dim={self.dim})"

    def _dim(self, shape: Shape) -> int:
        if not shape:
            raise ValueError("channel concepts need a layer output with at least one "
                             "dimension per sample")
        return self.dim % len(shape)

    def count(self, shape):
        return shape[self._dim(shape)]

    def mask(self, ids, shape, like):
        d = self._dim(shape)
        view = [1] * len(shape)
        view[d] = shape[d]
        m = torch.zeros(shape[d], dtype=like.dtype, device=like.device)
        m[torch.as_tensor(list(ids), dtype=torch.long, device=like.device)] = 1.0
        return m.view(view)

    def _channels_last(self, t: Tensor, shape: Shape) -> Tensor:
        k = len(shape)
        return t.movedim(t.dim() - k + self._dim(shape), -1).flatten(t.dim() - k, -2) \
            if k > 1 else t.unsqueeze(-2)

    def relevance(self, relevance, shape):
        return self._channels_last(relevance, shape).sum(-2)

    def activation(self, activation, shape):
        return self._channels_last(activation, shape).amax(-2)


class MaskConcept(Concept):
    """Concepts given by masks over the per-sample layer output, e.g. spatial regions.

    The relevance of a concept is the relevance summed over its mask, its activation
    the maximum activation inside the mask.

    Parameters
    ----------
    masks
        ``(n_concepts, ...)`` boolean or 0/1 tensor; each mask is broadcastable to the
        per-sample output shape (``(n, 1, H, W)`` for spatial regions of a
        convolution's output).
    """

    def __init__(self, masks: Tensor) -> None:
        if not isinstance(masks, Tensor) or masks.dim() < 2:
            raise ValueError("masks must be a tensor (n_concepts, ...) with one mask per concept")
        self.masks = masks.detach().bool()

    def __repr__(self) -> str:
        return f"MaskConcept({self.masks.shape[0]} masks of shape {tuple(self.masks.shape[1:])})"

    def key(self):
        import hashlib
        digest = hashlib.sha256(self.masks.cpu().numpy().tobytes()).hexdigest()[:16]
        return f"{self!r}:{digest}"

    def _full(self, shape: Shape) -> Tensor:
        try:
            return self.masks.expand(self.masks.shape[0], *shape)
        except RuntimeError:
            raise ValueError(f"concept masks of shape {tuple(self.masks.shape[1:])} do not fit "
                             f"the layer output shape {tuple(shape)}") from None

    def count(self, shape):
        self._full(shape)
        return self.masks.shape[0]

    def mask(self, ids, shape, like):
        idx = torch.as_tensor(list(ids), dtype=torch.long)
        return self.masks[idx].any(0).to(device=like.device, dtype=like.dtype)

    def relevance(self, relevance, shape):
        k = len(shape)
        full = self._full(shape).flatten(1).to(device=relevance.device, dtype=relevance.dtype)
        return relevance.flatten(relevance.dim() - k) @ full.T

    def activation(self, activation, shape):
        k = len(shape)
        full = self._full(shape).flatten(1).to(activation.device)
        flat = activation.flatten(activation.dim() - k).unsqueeze(-2)
        return flat.masked_fill(~full, float("-inf")).amax(-1)
