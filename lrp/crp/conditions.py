"""Conditions of concept relevance propagation.

A condition names concepts at one or more layers and the explained output::

    {"features.28": [5], "y": 3}                  # channel 5 of features.28, class 3
    {"features.28": [5, 9]}                       # channels 5 and 9 together, predicted class
    {"features.28": [5], "features.19": [2]}      # through 5 at features.28, then 2 at features.19
    Condition({"features.28": [5]}, target=3)     # the same as a dataclass

Several concept ids at one layer are one concept (the union of their masks).  On
several layers the relevance flowing through the upper layer restricted to its
concepts is passed down and restricted again at each lower layer (Achtibat et al.
2023, conditional relevance), so the heatmap shows the relevance that flows through
all of them.  The key ``"y"`` is the target (``None``: the predicted class); use
:class:`Condition` when a module of the model is called ``"y"``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor

ConceptIds = Union[int, Sequence[int], Tensor]
TargetSpec = Union[None, int, Sequence[int], Tensor]


def _ids(value: ConceptIds, layer: str) -> tuple[int, ...]:
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.dtype == torch.bool:
            raise TypeError(f"concept ids of {layer!r} must be integers, got {value.dtype}")
        return tuple(int(v) for v in value.flatten().tolist())
    if isinstance(value, bool) or not isinstance(value, (int, Sequence)) or isinstance(value, str):
        raise TypeError(f"concept ids of {layer!r} must be an int or a sequence of ints, "
                        f"got {value!r}")
    if isinstance(value, int):
        return (value,)
    ids = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) and not (
                isinstance(v, Tensor) and v.dim() == 0 and not v.is_floating_point()):
            raise TypeError(f"concept ids of {layer!r} must be ints, got {v!r}")
        ids.append(int(v))
    if not ids:
        raise ValueError(f"condition on {layer!r} names no concept")
    return tuple(ids)


@dataclass(frozen=True)
class Condition:
    """Concepts at layers, and the explained output.

    Parameters
    ----------
    concepts
        Module name -> concept id(s) at its output; several ids are one concept
        (the union).  Empty: no condition (the ordinary LRP heatmap of ``target``).
    target
        ``None``: the predicted class of each sample; an int: that class for every
        sample; a sequence / 1-D tensor: one class per sample.
    """

    concepts: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    target: TargetSpec = None

    def __post_init__(self) -> None:
        if not isinstance(self.concepts, Mapping):
            raise TypeError(f"concepts must map layer names to concept ids, got {self.concepts!r}")
        clean: dict[str, tuple[int, ...]] = {}
        for layer, value in self.concepts.items():
            if not isinstance(layer, str):
                raise TypeError(f"layer names must be strings, got {layer!r}")
            clean[layer] = _ids(value, layer)
        object.__setattr__(self, "concepts", clean)

    @classmethod
    def parse(cls, spec: Condition | Mapping) -> Condition:
        """A :class:`Condition` from itself or a mapping ``{layer: ids, "y": target}``."""
        if isinstance(spec, Condition):
            return spec
        if not isinstance(spec, Mapping):
            raise TypeError(f"a condition is a mapping {{layer: concept ids, 'y': target}} or a "
                            f"Condition, got {spec!r}")
        concepts = {k: v for k, v in spec.items() if k != "y"}
        target = spec.get("y")
        if isinstance(target, (list, tuple)) and len(target) == 1:
            target = target[0]  # zennit-crp style {"y": [3]}
        return cls(concepts, target)

    @property
    def layers(self) -> tuple[str, ...]:
        """The conditioned layers."""
        return tuple(self.concepts)

    def __repr__(self) -> str:
        parts = [f"{k}: {list(v)}" for k, v in self.concepts.items()]
        if self.target is not None:
            t = self.target.tolist() if isinstance(self.target, Tensor) else self.target
            parts.append(f"y: {t}")
        return "Condition{" + ", ".join(parts) + "}"


def parse_conditions(conditions: Sequence[Condition | Mapping]) -> list:
    """Normalize a sequence of conditions (at least one)."""
    if isinstance(conditions, (Mapping, Condition)):
        conditions = [conditions]
    out = [Condition.parse(c) for c in conditions]
    if not out:
        raise ValueError("no conditions given")
    return out


def target_key(target: TargetSpec) -> tuple | None:
    """A hashable form of a condition's target (to share backward passes)."""
    if target is None or isinstance(target, int):
        return (target,)
    if isinstance(target, Tensor):
        return tuple(target.flatten().tolist())
    return tuple(int(t) for t in target)
