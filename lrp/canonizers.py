"""Canonizers: temporary, exactly reversible model changes that make LRP rules apply.

Some layers have no LRP rule of their own but can be rewritten into layers that do.
A :class:`Canonizer` rewrites a model in place and returns a :class:`CanonizerHandle`
whose :meth:`~CanonizerHandle.remove` restores the model exactly: the same parameter
objects (optimizers holding them keep working), a bit-identical ``state_dict()`` and
unchanged ``requires_grad`` flags.  Handles are context managers::

    with MergeBatchNorm().apply(model) as handle:
        ...                     # BatchNorms fused into the preceding layers
    # model restored

Canonizers:

* :class:`MergeBatchNorm` -- fuse eval-mode BatchNorm into the preceding
  Linear / Conv / ConvTranspose layer, so that layer's rule covers both.
* :class:`SplitLayerNorm` -- split ``nn.LayerNorm`` into a normalization
  (:class:`LayerNormalization`) and an affine part (:class:`LayerNormAffine`), so
  the two can receive different rules.
* :class:`SequentialCanonizer` / :func:`apply_canonizers` -- several canonizers,
  applied in order and removed in reverse order.
"""
from __future__ import annotations

import warnings
from collections import Counter
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .cache import VersionKey, cached, module_state

__all__ = [
    "Canonizer", "CanonizerHandle", "MergeBatchNorm", "MergeBatchNormHandle",
    "SplitLayerNorm", "SplitLayerNormHandle", "LayerNormalization", "LayerNormAffine",
    "SplitLayerNormModule", "SequentialCanonizer", "SequentialCanonizerHandle",
    "apply_canonizers",
]


class CanonizerHandle:
    """Undoes what a canonizer did to a model.

    Parameters
    ----------
    restore
        Callables that undo the changes; :meth:`remove` calls them in reverse order.

    Notes
    -----
    :meth:`remove` is idempotent, and the handle is a context manager that calls
    :meth:`remove` on exit.
    """

    def __init__(self, restore: Sequence[Callable[[], None]] = ()):
        self._restore: List[Callable[[], None]] = list(restore)
        self.removed = False

    def remove(self) -> None:
        """Restore the model exactly; a second call does nothing.

        All restore steps run even if one raises; the first error is re-raised.
        """
        if self.removed:
            return
        self.removed = True
        error: Optional[BaseException] = None
        for undo in reversed(self._restore):
            try:
                undo()
            except BaseException as exc:  # noqa: BLE001 - restore as much as possible
                error = error or exc
        self._restore.clear()
        if error is not None:
            raise error

    def __enter__(self) -> "CanonizerHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


class Canonizer:
    """Base class of canonizers.

    Subclasses implement :meth:`apply`, which modifies the model in place and returns
    a :class:`CanonizerHandle` that restores it.
    """

    def apply(self, model: nn.Module) -> CanonizerHandle:
        """Canonize ``model`` in place.

        Parameters
        ----------
        model
            The model to modify.

        Returns
        -------
        CanonizerHandle
            Its :meth:`~CanonizerHandle.remove` restores the model exactly.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------- BatchNorm

_LINEAR_TYPES: Tuple[Type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSE_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_MERGEABLE = _LINEAR_TYPES + _TRANSPOSE_TYPES


def _identity(input: Tensor, *args, **kwargs) -> Tensor:
    return input


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _can_merge(layer: nn.Module, bn: nn.Module) -> bool:
    """Whether ``layer -> bn`` is a pair of compatible, unmodified modules."""
    if not isinstance(layer, _MERGEABLE) or not isinstance(bn, _BatchNorm):
        return False
    if bn.running_mean is None or bn.running_var is None or "forward" in bn.__dict__:
        return False  # batch statistics only, or already made an identity
    weight = layer._parameters.get("weight")
    if not isinstance(weight, nn.Parameter) or isinstance(weight, nn.UninitializedParameter):
        return False  # lazy, weight-normed or parametrized layers
    if "bias" not in layer._parameters:
        return False
    if getattr(layer, "parametrizations", None) is not None:
        return False
    return _out_channels(layer) == bn.num_features


def _fused(layer: nn.Module, bn: _BatchNorm) -> Tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(layer(x))`` as a single layer (eval statistics)."""
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


def _parameters(layer: nn.Module, bn: _BatchNorm) -> Tuple[nn.Parameter, nn.Parameter]:
    """The fused parameters as ``Parameter`` objects with the layer's ``requires_grad``."""
    weight, bias = _fused(layer, bn)
    old_weight, old_bias = layer.weight, layer.bias
    bias_grad = old_bias.requires_grad if old_bias is not None else old_weight.requires_grad
    return (nn.Parameter(weight, requires_grad=old_weight.requires_grad),
            nn.Parameter(bias, requires_grad=bias_grad))


def _call_counts(model: nn.Module, graph) -> Counter:
    counts: Counter = Counter()
    for node in graph.nodes:
        if node.op == "call_module":
            counts[id(model.get_submodule(node.target))] += 1
    return counts


def _structure(model: nn.Module) -> Tuple[Any, ...]:
    """What the BatchNorm pairs depend on: every submodule, its name, and any forward
    patched onto an instance (the class forwards are fixed)."""
    return tuple((name, module, module.__dict__.get("forward"))
                 for name, module in model.named_modules(remove_duplicate=False))


def _find_pairs(model: nn.Module) -> Tuple[List[Tuple[str, str]], bool]:
    """The ``(layer, bn)`` pairs and whether they came from the fx graph."""
    try:
        return _pairs_fx(model), True
    except Exception:  # noqa: BLE001 - any tracing failure: use the fallback
        return _pairs_sequential(model), False


def _pairs_fx(model: nn.Module) -> List[Tuple[str, str]]:
    """``(layer, bn)`` name pairs from the fx graph; raises if tracing fails."""
    import torch.fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.fx.symbolic_trace(model).graph
    counts = _call_counts(model, graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        bn = model.get_submodule(node.target)
        if not isinstance(bn, _BatchNorm) or len(node.args) != 1 or node.kwargs:
            continue
        prev = node.args[0]
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module":
            continue
        layer = model.get_submodule(prev.target)
        if len(prev.users) != 1 or counts[id(layer)] != 1 or counts[id(bn)] != 1:
            continue  # the layer's output is used elsewhere, or a module is reused
        if _can_merge(layer, bn):
            pairs.append((prev.target, node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> List[Tuple[str, str]]:
    """``(layer, bn)`` name pairs of adjacent children of ``nn.Sequential`` containers."""
    registrations = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    pairs = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (lname, layer), (bname, bn) in zip(children, children[1:]):
            if registrations[id(layer)] != 1 or registrations[id(bn)] != 1:
                continue
            if _can_merge(layer, bn):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + lname, prefix + bname))
    return pairs


class MergeBatchNormHandle(CanonizerHandle):
    """Handle of :class:`MergeBatchNorm`.

    Attributes
    ----------
    merged : list of (str, str)
        Qualified names ``(layer, batchnorm)`` of the fused pairs.
    traced : bool
        Whether the pairs were found in the ``torch.fx`` graph (``False``: tracing
        failed and adjacent children of ``nn.Sequential`` containers were used).
    """

    def __init__(self, restore: Sequence[Callable[[], None]], merged: List[Tuple[str, str]],
                 traced: bool):
        super().__init__(restore)
        self.merged = merged
        self.traced = traced


class MergeBatchNorm(Canonizer):
    """Fuse eval-mode BatchNorm into the preceding Linear / Conv / ConvTranspose layer.

    A BatchNorm in eval mode is the affine map ``y = s * (x - mean) + beta`` with
    ``s = gamma / sqrt(var + eps)``, so ``bn(layer(x))`` equals one layer with weight
    ``W * s`` (scaled along the output channels) and bias ``(b - mean) * s + beta``.
    The layer gets these new parameters and the BatchNorm becomes an identity, so the
    layer's LRP rule covers both.

    Pairs are found in the ``torch.fx`` graph of the model: a layer whose only user is
    a BatchNorm, both called exactly once.  BatchNorms after a concatenation, pooling,
    an activation or a layer whose output is also used elsewhere are left alone.  If
    the model cannot be traced (data-dependent control flow), adjacent children of
    ``nn.Sequential`` containers (layer, then BatchNorm) are fused instead.

    Notes
    -----
    The new parameters are computed without gradient, so gradients do not reach the
    original parameters while the canonizer is applied.  :meth:`CanonizerHandle.remove`
    puts the original ``Parameter`` objects back.  A ``Linear`` followed by
    ``BatchNorm1d`` is assumed to normalize the linear layer's features (input of
    shape ``(N, C)`` or ``(N, C, L)`` with ``C`` the output features).

    Examples
    --------
    >>> model = torchvision.models.resnet18().eval()
    >>> with MergeBatchNorm().apply(model) as handle:
    ...     print(len(handle.merged))
    20
    """

    def apply(self, model: nn.Module) -> MergeBatchNormHandle:
        """Fuse the BatchNorms of ``model`` in place.

        Parameters
        ----------
        model
            The model, in eval mode.

        Returns
        -------
        MergeBatchNormHandle
            Restores the model; ``handle.merged`` lists the fused pairs.

        Raises
        ------
        ValueError
            If a BatchNorm to fuse is in training mode (fusion uses the running
            statistics).
        """
        # tracing costs tens of milliseconds on a large model: once per structure
        pairs, traced = cached(self, model, VersionKey(_structure(model)),
                               partial(_find_pairs, model), store="_lrp_pairs")
        training = [bn for _, bn in pairs if model.get_submodule(bn).training]
        if training:
            raise ValueError(
                f"MergeBatchNorm: BatchNorm {training[0]!r} is in training mode; fusion "
                "uses the running statistics -- call model.eval() first")
        # compute everything first, then swap: nothing can fail half-way
        fused = []
        for lname, bname in pairs:
            layer, bn = model.get_submodule(lname), model.get_submodule(bname)
            key = module_state(layer, bn, extra=[bn.eps])
            fused.append((layer, bn, *cached(self, layer, key, partial(_parameters, layer, bn))))
        restore = []
        for layer, bn, weight, bias in fused:
            restore.append(self._swap(layer, bn, weight, bias))
        return MergeBatchNormHandle(restore, list(pairs), traced)

    @staticmethod
    def _swap(layer: nn.Module, bn: nn.Module, weight: nn.Parameter,
              bias: nn.Parameter) -> Callable[[], None]:
        old_weight = layer._parameters["weight"]
        old_bias = layer._parameters["bias"]
        layer._parameters["weight"] = weight
        layer._parameters["bias"] = bias
        bn.forward = _identity

        def restore() -> None:
            layer._parameters["weight"] = old_weight
            layer._parameters["bias"] = old_bias
            bn.__dict__.pop("forward", None)

        return restore


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


class SplitLayerNormModule(nn.Sequential):
    """``nn.Sequential(LayerNormalization, LayerNormAffine)`` replacing an ``nn.LayerNorm``.

    Read-only properties ``normalized_shape``, ``eps``, ``elementwise_affine``,
    ``weight`` and ``bias`` mirror the replaced LayerNorm, for code that reads them
    (e.g. ``nn.TransformerEncoderLayer`` checks ``norm1.eps``).

    Parameters
    ----------
    norm
        The normalization.
    affine
        The affine part.
    """

    def __init__(self, norm: LayerNormalization, affine: LayerNormAffine):
        super().__init__(norm, affine)

    @property
    def normalized_shape(self) -> Tuple[int, ...]:
        return self[0].normalized_shape

    @property
    def eps(self) -> float:
        return self[0].eps

    @property
    def elementwise_affine(self) -> bool:
        return True

    @property
    def weight(self) -> nn.Parameter:
        return self[1].weight

    @property
    def bias(self) -> Optional[nn.Parameter]:
        return self[1].bias


class SplitLayerNormHandle(CanonizerHandle):
    """Handle of :class:`SplitLayerNorm`.

    Attributes
    ----------
    replaced : list of str
        Qualified names of the replaced LayerNorms.
    """

    def __init__(self, restore: Sequence[Callable[[], None]], replaced: List[str]):
        super().__init__(restore)
        self.replaced = replaced


class SplitLayerNorm(Canonizer):
    """Replace each affine ``nn.LayerNorm`` by normalization followed by affine map.

    The replacement is a :class:`SplitLayerNormModule`, i.e.
    ``nn.Sequential(LayerNormalization(normalized_shape, eps),
    LayerNormAffine(weight, bias))`` holding the original ``Parameter`` objects, so a
    composite can give the normalization and the affine part different rules.  A
    LayerNorm registered under several names is replaced everywhere by the same
    module.  Left alone: LayerNorms without ``elementwise_affine``, subclasses of
    ``nn.LayerNorm`` (their ``forward`` may differ) and a model that is itself a
    LayerNorm.  Hooks registered on a replaced LayerNorm do not run while applied.
    """

    def apply(self, model: nn.Module) -> SplitLayerNormHandle:
        """Split the LayerNorms of ``model`` in place.

        Parameters
        ----------
        model
            The model to modify.

        Returns
        -------
        SplitLayerNormHandle
            Puts the original LayerNorm modules back; ``handle.replaced`` lists them.
        """
        targets = [(name, m) for name, m in model.named_modules(remove_duplicate=False)
                   if name and type(m) is nn.LayerNorm and m.elementwise_affine]
        replacements: Dict[int, SplitLayerNormModule] = {}
        restore: List[Callable[[], None]] = []
        replaced = []
        for name, norm in targets:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            if parent._modules.get(attr) is not norm:
                continue  # already replaced through another path
            if id(norm) not in replacements:
                replacements[id(norm)] = SplitLayerNormModule(
                    LayerNormalization(norm.normalized_shape, norm.eps),
                    LayerNormAffine(norm.weight, norm.bias))
            parent._modules[attr] = replacements[id(norm)]
            restore.append(_module_restorer(parent, attr, norm))
            replaced.append(name)
        return SplitLayerNormHandle(restore, replaced)


def _module_restorer(parent: nn.Module, attr: str, module: nn.Module) -> Callable[[], None]:
    def restore() -> None:
        parent._modules[attr] = module
    return restore


# --------------------------------------------------------------------------- several

class SequentialCanonizerHandle(CanonizerHandle):
    """Handle of :class:`SequentialCanonizer`.

    Parameters
    ----------
    handles
        The handles of the applied canonizers, in application order;
        :meth:`remove` removes them in reverse order.

    Attributes
    ----------
    handles : list of CanonizerHandle
        The individual handles.
    """

    def __init__(self, handles: Sequence[CanonizerHandle]):
        super().__init__([h.remove for h in handles])
        self.handles = list(handles)


class SequentialCanonizer(Canonizer):
    """Several canonizers, applied in order and removed in reverse order.

    Parameters
    ----------
    *canonizers
        The canonizers.
    """

    def __init__(self, *canonizers: Canonizer):
        for c in canonizers:
            if not isinstance(c, Canonizer):
                raise TypeError(f"expected canonizers, got {c!r}")
        self.canonizers = list(canonizers)

    def __repr__(self) -> str:
        return f"SequentialCanonizer({', '.join(map(repr, self.canonizers))})"

    def apply(self, model: nn.Module) -> "SequentialCanonizerHandle":
        """Apply all canonizers to ``model`` in order.

        If one raises, those already applied are removed before the error propagates.

        Returns
        -------
        SequentialCanonizerHandle
            Removes the canonizers in reverse order.
        """
        handles: List[CanonizerHandle] = []
        try:
            for canonizer in self.canonizers:
                handles.append(canonizer.apply(model))
        except BaseException:
            for handle in reversed(handles):
                handle.remove()
            raise
        return SequentialCanonizerHandle(handles)


def apply_canonizers(model: nn.Module,
                     canonizers: Sequence[Canonizer]) -> SequentialCanonizerHandle:
    """Apply ``canonizers`` to ``model`` in order; the handle removes them in reverse.

    Parameters
    ----------
    model
        The model to modify in place.
    canonizers
        The canonizers (may be empty).

    Returns
    -------
    SequentialCanonizerHandle
        Restores the model; usable as a context manager.

    Raises
    ------
    Exception
        Whatever a canonizer raised, after the ones already applied were removed.
    """
    return SequentialCanonizer(*canonizers).apply(model)
