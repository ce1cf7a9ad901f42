"""Functional forwards of the layer types rules know, with substituted parameters.

A rule evaluates a layer with modified parameters (``W+``, ``W + gamma W+``, ...)
or modified inputs.  :func:`layer_forward` does that without calling the module
(so no hooks fire).  Register more layer types with :func:`register_layer`.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Type

import torch.nn.functional as F
from torch import Tensor, nn

LayerForward = Callable[[nn.Module, Tensor, Tensor, Optional[Tensor]], Tensor]

_CONV_TRANSPOSE = {
    nn.ConvTranspose1d: F.conv_transpose1d,
    nn.ConvTranspose2d: F.conv_transpose2d,
    nn.ConvTranspose3d: F.conv_transpose3d,
}


def _linear(module: nn.Module, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return F.linear(x, weight, bias)


_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def _strided_pointwise(module: nn.Module) -> bool:
    """A plain 1x1 convolution with stride > 1 and no padding (ResNet's downsample)."""
    return (type(module) in _CONV and any(s > 1 for s in module.stride)  # type: ignore[union-attr]
            and all(k == 1 for k in module.kernel_size)  # type: ignore[union-attr]
            and module.padding in ("valid", (0,) * len(module.kernel_size)))  # type: ignore


def _conv(module: nn.Module, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    if _strided_pointwise(module):
        # Same values as the strided convolution; on the CPU its backward copies the
        # whole input (``convolution_backward`` makes it contiguous even when only the
        # input gradient is needed), 3x slower than slicing first.
        picked = x[(Ellipsis, *(slice(None, None, s) for s in module.stride))]  # type: ignore
        return _CONV[type(module)](picked, weight, bias, 1, 0, 1, module.groups)  # type: ignore
    return module._conv_forward(x, weight, bias)  # type: ignore[operator]


def _conv_transpose(module: nn.Module, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    fn = _CONV_TRANSPOSE[type(module)]  # type: ignore[index]
    m = module
    return fn(x, weight, bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation)


_REGISTRY: Dict[Type[nn.Module], LayerForward] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
    nn.ConvTranspose1d: _conv_transpose,
    nn.ConvTranspose2d: _conv_transpose,
    nn.ConvTranspose3d: _conv_transpose,
}

#: Layer types with a weight that parameter-modifying rules accept.
WEIGHTED_LAYERS: Tuple[Type[nn.Module], ...] = tuple(_REGISTRY)


def register_layer(layer_type: Type[nn.Module], forward: LayerForward) -> None:
    """Teach the rules a new weighted layer type.

    Parameters
    ----------
    layer_type
        The module class (subclasses match too).
    forward
        ``forward(module, x, weight, bias) -> Tensor``, linear in ``x`` for fixed
        parameters, computing the layer with the given parameters.
    """
    global WEIGHTED_LAYERS
    _REGISTRY[layer_type] = forward
    WEIGHTED_LAYERS = tuple(_REGISTRY)


def _conv1d(module: nn.Module, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Hugging Face's GPT-2 ``Conv1D``: a linear layer whose weight is ``(in, out)``."""
    out = x @ weight
    return out if bias is None else out + bias


def _known(module: nn.Module) -> bool:
    """Register layer types that live in optional packages when first seen (matched by
    class name and module path, so the package is never imported here)."""
    kind = type(module)
    if kind in _REGISTRY:
        return True
    if kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers"):
        register_layer(kind, _conv1d)
        return True
    return False


def is_weighted(module: nn.Module) -> bool:
    """Whether ``module`` is a registered weighted layer (Linear, Conv, GPT-2's Conv1D,
    ...)."""
    return isinstance(module, tuple(_REGISTRY)) or _known(module)


def layer_forward(module: nn.Module, x: Tensor, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None) -> Tensor:
    """Evaluate ``module`` on ``x``, with ``weight``/``bias`` in place of its own.

    For modules without registered weights (pooling, ...) ``weight`` must be
    ``None`` and the module's own ``forward`` runs (hooks do not fire).
    """
    _known(module)
    for layer_type in type(module).__mro__:
        fn = _REGISTRY.get(layer_type)  # type: ignore[arg-type]
        if fn is not None:
            if weight is None:
                raise TypeError(f"{type(module).__name__} needs its (modified) weight")
            return fn(module, x, weight, bias)
    if weight is not None:
        raise TypeError(f"no parameterised forward registered for {type(module).__name__}")
    return module.forward(x)
