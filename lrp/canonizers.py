"""Canonizers: model changes that make LRP rules apply, made inside the scope only.

Some layers have no LRP rule of their own but can be rewritten into layers that do.
A :class:`Canonizer` does not touch the model: it tells the scope of an explanation
(:mod:`lrp.scope`) what to use instead -- substituted parameters for a layer, an
identity for a BatchNorm, a split of a LayerNorm into two parts -- as a
:class:`lrp.scope.Substitution`.  Other callers of the model (other threads, code
outside the ``explain`` / ``attached`` block) see the model unchanged, and nothing is
left on it afterwards.  Structure comes from one probe forward (:mod:`lrp.probe`:
which module produced which tensor, and who else read it), not from tracing.

Canonizers:

* :class:`MergeBatchNorm` -- fuse eval-mode BatchNorm into the preceding
  Linear / Conv / ConvTranspose layer, so that layer's rule covers both.
* :class:`SplitLayerNorm` -- evaluate each ``nn.LayerNorm`` as a normalization
  (:class:`LayerNormalization`) followed by an affine part (:class:`LayerNormAffine`),
  so the two can receive different rules.

:func:`canonized` runs a model canonized inside a ``with`` block (for checks)::

    with canonized(model, [MergeBatchNorm()], x) as substitution:
        model(x)                 # BatchNorms fused, in this context only
    substitution.merged          # the fused (layer, batchnorm) pairs
"""
from __future__ import annotations

import contextlib
from functools import partial
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .attach import check_model
from .cache import cached, module_state
from .probe import ModelGraph, probe
from .scope import Scope, Substitution

__all__ = [
    "Canonizer", "MergeBatchNorm", "SplitLayerNorm", "LayerNormalization", "LayerNormAffine",
    "canonize", "canonized",
]


class Canonizer:
    """Base class of canonizers.

    Subclasses implement :meth:`substitute`.  ``needs_graph`` says whether they
    need the model's :class:`lrp.probe.ModelGraph` (and so an example input).
    """

    needs_graph = False

    def substitute(self, model: nn.Module, graph: Optional[ModelGraph]) -> Substitution:
        """What to change inside a scope to canonize ``model``.

        Parameters
        ----------
        model
            The model (not modified).
        graph
            Its structure from a probe forward (when ``needs_graph``).

        Returns
        -------
        lrp.scope.Substitution
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------- BatchNorm

_LINEAR_TYPES: Tuple[Type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSE_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_MERGEABLE = _LINEAR_TYPES + _TRANSPOSE_TYPES


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _can_merge(layer: nn.Module, bn: nn.Module) -> bool:
    """Whether ``layer -> bn`` is a pair of compatible modules."""
    if not isinstance(layer, _MERGEABLE) or not isinstance(bn, _BatchNorm):
        return False
    if bn.running_mean is None or bn.running_var is None:
        return False  # batch statistics only
    weight = layer._parameters.get("weight")
    if not isinstance(weight, nn.Parameter) or isinstance(weight, nn.UninitializedParameter):
        return False  # lazy, weight-normed or parametrized layers
    if "bias" not in layer._parameters:
        return False
    if getattr(layer, "parametrizations", None) is not None:
        return False
    return _out_channels(layer) == bn.num_features


def _fused(layer: nn.Module, bn: _BatchNorm) -> Tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(layer(x))`` as a single layer (eval statistics),
    detached."""
    weight = layer.weight
    dtype = weight.dtype
    work = torch.float64 if weight.device.type != "mps" else torch.float32
    with torch.no_grad():
        var = bn.running_var.to(work)
        mean = bn.running_mean.to(work)
        gamma = bn.weight.to(work) if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.to(work) if bn.bias is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + bn.eps)
        # the per-channel scale in high precision, the weight product in its own dtype
        w = weight
        scale_w = scale.to(dtype)
        if isinstance(layer, _TRANSPOSE_TYPES):
            # weight: (in, out // groups, *kernel); output channel g * (out//groups) + j
            groups = layer.groups
            in_ch, out_per_group = w.shape[0], w.shape[1]
            kernel = w.shape[2:]
            w = w.reshape(groups, in_ch // groups, out_per_group, *kernel)
            s = scale_w.reshape(groups, 1, out_per_group, *([1] * len(kernel)))
            new_w = (w * s).reshape(weight.shape)
        else:
            # weight: (out, in [// groups], *kernel)
            new_w = w * scale_w.reshape(-1, *([1] * (w.dim() - 1)))
        bias = layer.bias.to(work) if layer.bias is not None else torch.zeros_like(mean)
        new_b = (bias - mean) * scale + beta
    return new_w.to(dtype), new_b.to(dtype)



def _batchnorm_pairs(model: nn.Module, graph: ModelGraph) -> List[Tuple[str, str]]:
    """``(layer, bn)`` name pairs: a BatchNorm called once whose input is the output of
    a mergeable layer called once, read by nothing but that BatchNorm."""
    modules = dict(model.named_modules())
    pairs = []
    for call in graph.calls:
        bn = modules.get(call.name)
        if not isinstance(bn, _BatchNorm) or graph.call_counts.get(call.name) != 1:
            continue
        if not call.inputs or graph.uses.get(call.inputs[0], []) != [call.name]:
            continue  # its input is also read elsewhere (or modified in place)
        producers = [c for c in graph.calls if c.output == call.inputs[0]
                     and isinstance(modules.get(c.name), _MERGEABLE)]
        if len(producers) != 1 or graph.call_counts.get(producers[0].name) != 1:
            continue
        if _can_merge(modules[producers[0].name], bn):
            pairs.append((producers[0].name, call.name))
    return pairs


class MergeBatchNorm(Canonizer):
    """Fuse eval-mode BatchNorm into the preceding Linear / Conv / ConvTranspose layer.

    A BatchNorm in eval mode is the affine map ``y = s * (x - mean) + beta`` with
    ``s = gamma / sqrt(var + eps)``, so ``bn(layer(x))`` equals one layer with weight
    ``W * s`` (scaled along the output channels) and bias ``(b - mean) * s + beta``.
    Inside the scope the layer computes with these parameters and the BatchNorm is an
    identity, so the layer's LRP rule covers both; the model itself is not changed.

    Pairs come from a probe forward (:func:`lrp.probe.probe`): a BatchNorm whose
    input is the output of a layer, both called exactly once, with nothing else
    reading the layer's output.  BatchNorms after a concatenation, pooling, an
    activation, or a layer whose output is also used elsewhere (or changed in place)
    are left alone.  Fused parameters are computed in float64 and kept on the
    canonizer while the modules' parameters and statistics are unchanged.

    Examples
    --------
    >>> model = torchvision.models.resnet18().eval()
    >>> with canonized(model, [MergeBatchNorm()], torch.randn(1, 3, 64, 64)) as sub:
    ...     print(len(sub.merged))
    20
    """

    needs_graph = True

    def substitute(self, model: nn.Module, graph: Optional[ModelGraph]) -> Substitution:
        if graph is None:
            raise ValueError("MergeBatchNorm needs the model's structure: give an example input")
        modules = dict(model.named_modules())
        sub = Substitution()
        for lname, bname in _batchnorm_pairs(model, graph):
            layer, bn = modules[lname], modules[bname]
            key = module_state(layer, bn, extra=[bn.eps])
            weight, bias = cached(self, layer, key, partial(_fused, layer, bn))
            sub.params[layer] = {"weight": weight, "bias": bias}
            sub.identity.add(bn)
            sub.merged.append((lname, bname))
        return sub


# --------------------------------------------------------------------------- LayerNorm

class LayerNormalization(nn.Module):
    """Layer normalization without the affine part: ``(x - mean) / sqrt(var + eps)``.

    Parameters
    ----------
    normalized_shape
        The trailing dimensions normalized over (as for ``nn.LayerNorm``).
    eps
        Added to the variance.
    """

    def __init__(self, normalized_shape: Sequence[int], eps: float = 1e-5):
        super().__init__()
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps

    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, None, None, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class LayerNormAffine(nn.Module):
    """Element-wise affine map ``x * weight + bias`` over the trailing dimensions.

    Parameters
    ----------
    weight
        The scale; the given ``Parameter`` object is registered as is (not copied).
    bias
        The shift, or ``None``; registered as is.
    """

    def __init__(self, weight: nn.Parameter, bias: Optional[nn.Parameter] = None):
        super().__init__()
        self.weight = weight
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = bias

    def forward(self, input: Tensor) -> Tensor:
        out = input * self.weight
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, bias={self.bias is not None}"


class SplitLayerNorm(Canonizer):
    """Evaluate each affine ``nn.LayerNorm`` as a normalization followed by an affine
    map, so that a composite can give the two different rules.

    Inside the scope, LayerNorm ``name`` computes ``affine(norm(x))`` with two modules
    that exist only there: ``name.0`` (:class:`LayerNormalization`) and ``name.1``
    (:class:`LayerNormAffine`, holding the LayerNorm's own weight and bias).  Type
    maps and names in composites see them like any other module.  Left alone:
    LayerNorms without ``elementwise_affine`` and subclasses of ``nn.LayerNorm``
    (their ``forward`` may differ).
    """

    def substitute(self, model: nn.Module, graph: Optional[ModelGraph]) -> Substitution:
        sub = Substitution()
        done: Dict[int, str] = {}
        for name, norm in model.named_modules():
            if not name or type(norm) is not nn.LayerNorm or not norm.elementwise_affine:
                continue
            if id(norm) in done:
                continue
            done[id(norm)] = name
            parts = cached(self, norm, module_state(norm, extra=[norm.eps]),
                           partial(_split, norm))
            sub.virtual[f"{name}.0"], sub.virtual[f"{name}.1"] = parts
            sub.replace[norm] = _composed(*parts)
        return sub


def _split(norm: nn.LayerNorm) -> Tuple[nn.Module, nn.Module]:
    return (LayerNormalization(norm.normalized_shape, norm.eps),
            LayerNormAffine(norm.weight, norm.bias))


def _composed(first: nn.Module, second: nn.Module):
    def forward(x: Tensor, *args, **kwargs) -> Tensor:
        return second(first(x))
    return forward


# --------------------------------------------------------------------------- several

def canonize(model: nn.Module, canonizers: Sequence[Canonizer],
             example_input=None, model_kwargs: Optional[dict] = None) -> Substitution:
    """The combined substitution of ``canonizers`` (applied in order, later ones
    winning on conflicts) for ``model``.

    Parameters
    ----------
    model
        The model (not modified).
    canonizers
        The canonizers.
    example_input
        An input batch, needed by canonizers that read the model's structure
        (:class:`MergeBatchNorm`); a probe forward of its first sample runs once per
        model structure and input signature.
    model_kwargs
        Keyword arguments the model is called with.
    """
    for canonizer in canonizers:
        if not isinstance(canonizer, Canonizer):
            raise TypeError(f"expected canonizers, got {canonizer!r}")
    graph = None
    if any(c.needs_graph for c in canonizers):
        if example_input is None:
            raise ValueError("canonizers need an example input to find the model's structure")
        graph = probe(model, example_input, model_kwargs)
    total = Substitution()
    for canonizer in canonizers:
        total.update(canonizer.substitute(model, graph))
    return total


@contextlib.contextmanager
def canonized(model: nn.Module, canonizers: Sequence[Canonizer],
              example_input=None) -> Iterator[Substitution]:
    """Run ``model`` canonized (no rules) inside the ``with`` block, in this context.

    The model is not modified; other threads see it unchanged.

    Yields
    ------
    lrp.scope.Substitution
        What the canonizers substitute (``merged`` lists fused BatchNorm pairs).
    """
    check_model(model)
    substitution = canonize(model, canonizers, example_input)
    with Scope(model, substitution=substitution):
        yield substitution
