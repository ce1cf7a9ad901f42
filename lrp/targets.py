"""What a method explains: input checks, target selection and the output seeds.

Every method selects targets the same way: ``None`` (the predicted class of each
sample), an int (that class for all), one class per sample, a ``(batch, k)`` tensor
of ``k`` classes per sample (sharing one forward), or, for :func:`lrp.explain`, a
callable ``f(output) -> relevance`` for a custom output relevance.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .core import ratio

Target = Union[None, int, Sequence[int], Tensor, Callable[[Tensor], Tensor]]


def check_inputs(inputs: Tensor) -> None:
    """Raise a clear error unless ``inputs`` is a finite floating-point batch."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be floating point, got {inputs.dtype}")
    if inputs.dim() < 2:
        raise ValueError(f"inputs need a batch dimension, got shape {tuple(inputs.shape)}")
    # a NaN or infinity makes the sum non-finite: the element-wise check (several
    # times slower) runs only then, or when a finite sum overflowed
    if not torch.isfinite(inputs.sum()) and not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or infinite values")


def resolve_target(target: Target, output: Tensor) -> Optional[Tensor]:
    """The explained classes ``(batch,)`` or ``(batch, k)`` for ``target`` given the
    model ``output`` ``(batch, classes)``; ``None`` for a target function."""
    batch, classes = output.shape[0], output.shape[1]
    if callable(target) and not isinstance(target, Tensor):
        return None
    if target is None:
        return output.argmax(dim=1)
    accepted = ("None (the predicted class), an int, one int per sample, a (batch, k) integer "
                "tensor, or a function of the output")
    if isinstance(target, (str, bytes)):
        raise TypeError(f"target {target!r} is a string; give class indices: {accepted}")
    try:
        t = torch.as_tensor(target, device=output.device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"target of type {type(target).__name__} is not understood; give "
                        f"{accepted}") from None
    if t.numel() == 0 and batch > 0:
        raise ValueError(f"target has no classes (shape {tuple(t.shape)}); give {accepted}, "
                         f"for a batch of {batch}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"targets must be integers (class indices), got {t.dtype} values")
    t = t.long()
    if t.dim() == 0:
        t = t.expand(batch)
    elif t.dim() == 1 and t.shape[0] != batch:
        raise ValueError(f"got {t.shape[0]} targets for a batch of {batch}; give one target "
                         "per sample, an int, or a (batch, k) tensor for several each")
    elif t.dim() == 2 and t.shape[0] != batch:
        raise ValueError(f"several targets need shape (batch={batch}, k), got {tuple(t.shape)}")
    elif t.dim() > 2:
        raise ValueError(f"targets must have at most 2 dimensions, got {tuple(t.shape)}")
    if ((t < 0) | (t >= classes)).any():
        raise ValueError(f"target out of range: the model has {classes} outputs, "
                         f"got targets {t.unique().tolist()}")
    return t


def output_seeds(output: Tensor, target: Target, t: Optional[Tensor], normalize: bool) -> List[Tensor]:
    """Gradients to start the backward pass with (one per target column)."""
    out = output.detach()
    if t is None:
        relevance = target(out)  # type: ignore[operator]
        if not isinstance(relevance, Tensor) or relevance.shape != out.shape:
            got = tuple(relevance.shape) if isinstance(relevance, Tensor) else type(relevance).__name__
            raise ValueError(f"a target function must return a tensor of the output's shape "
                             f"{tuple(out.shape)}, got {got}")
        if not bool(torch.isfinite(relevance).all()):
            raise ValueError("the target function returned NaN or infinite output relevance")
        return [ratio(relevance, out, 1e-12)]
    columns = t.unsqueeze(1) if t.dim() == 1 else t
    seeds = []
    for k in range(columns.shape[1]):
        seed = torch.zeros_like(out).scatter_(1, columns[:, k:k + 1], 1.0)
        if normalize:
            seed = seed * ratio(torch.ones_like(out), out, 1e-12)
        seeds.append(seed)
    return seeds


def check_class_target(target: Target) -> None:
    """Raise for a target function where a method needs class indices."""
    if callable(target) and not isinstance(target, Tensor):
        raise TypeError("gradient methods explain class scores: give the target as class "
                        "indices (a target function is only supported by lrp.explain)")


def layout(x: Tensor, t: Tensor) -> Tensor:
    """``x`` shaped like the relevance: ``(batch, 1, ...)`` for several targets each."""
    return x.unsqueeze(1) if t.dim() == 2 else x


def pick(output: Tensor, t: Tensor) -> Tensor:
    """The explained scores ``(batch,)`` or ``(batch, k)``."""
    return output.gather(1, t[:, None])[:, 0] if t.dim() == 1 else output.gather(1, t)


def target_sums(relevance: Tensor, t: Tensor) -> Tensor:
    """Relevance summed per sample (and per target column)."""
    return relevance.flatten(t.dim()).sum(-1)
