"""The one place where "relevance or a method" becomes relevance.

Every metric takes an ``explanation`` that is one of

* a relevance tensor: input-shaped ``(batch, ...)``, or for image-like inputs
  ``(batch, C, *spatial)`` also channel-reduced as ``(batch, 1, *spatial)`` or
  ``(batch, *spatial)``;
* an :class:`lrp.composites.Composite`: explained with :func:`lrp.explain`;
* a method: a callable ``method(model, inputs, target=target)`` returning an
  :class:`lrp.Explanation` (or a relevance tensor), such as
  :func:`lrp.gradients.gradient_x_input`, ``functools.partial(lrp.integrated_gradients,
  steps=32)`` or :func:`random_method`.

Metrics that must explain other inputs or other models than the given ones (model
randomization, the random-logit test, max-sensitivity) need a composite or a method.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor, nn

from ..batching import Seed, make_generator, rand_like
from ..composites import Composite
from ..explanation import Explanation
from ..targets import Target, check_inputs
from .features import feature_relevance
from .outputs import prepare

Method = Callable[..., Union[Explanation, Tensor]]
Explainer = Union[Tensor, Composite, Method]

__all__ = ["Explainer", "Method", "is_method", "explain_with", "explain_batched",
           "check_relevance", "relevance_for", "feature_map", "random_method"]


def is_method(explanation: Explainer) -> bool:
    """Whether ``explanation`` computes relevance (a composite or a callable)."""
    return isinstance(explanation, Composite) or (callable(explanation)
                                                  and not isinstance(explanation, Tensor))


def explain_with(explainer: Explainer, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
    """The relevance of ``inputs`` for one class per sample ``target`` (detached,
    input-shaped), from a composite or a method."""
    if isinstance(explainer, Composite):
        from ..explain import explain
        result = explain(model, inputs, explainer, target=target)
    elif callable(explainer) and not isinstance(explainer, Tensor):
        result = explainer(model, inputs, target=target)
    else:
        raise TypeError("an explanation must be a relevance tensor, an lrp composite or a "
                        f"method returning an lrp.Explanation, got {type(explainer).__name__}")
    relevance = result.relevance if isinstance(result, Explanation) else result
    if not isinstance(relevance, Tensor):
        raise TypeError(f"the method returned {type(result).__name__}, not an lrp.Explanation "
                        "or a tensor")
    return check_relevance(relevance.detach(), inputs)


def check_relevance(relevance: Tensor, inputs: Tensor) -> Tensor:
    """``relevance`` on the inputs' device and dtype, shaped to broadcast against them.

    Raises
    ------
    ValueError
        If its shape fits neither the inputs nor their channel-reduced shape, or it has
        NaN or infinite values.
    """
    if not isinstance(relevance, Tensor):
        raise TypeError(f"relevance must be a torch.Tensor, got {type(relevance).__name__}")
    shape, x_shape = tuple(relevance.shape), tuple(inputs.shape)
    fits = [x_shape]
    if inputs.dim() >= 3:
        fits += [(x_shape[0], 1) + x_shape[2:], (x_shape[0],) + x_shape[2:]]
    if shape not in fits:
        raise ValueError(f"relevance of shape {shape} does not fit inputs of shape {x_shape}; "
                         f"expected one of {', '.join(str(f) for f in fits)}")
    if not torch.isfinite(relevance).all():
        raise ValueError("relevance contains NaN or infinite values")
    if inputs.dim() >= 3 and relevance.dim() == inputs.dim() - 1:
        relevance = relevance.unsqueeze(1)
    return relevance.to(device=inputs.device, dtype=inputs.dtype)


def relevance_for(explanation: Explainer, model: nn.Module, inputs: Tensor, target: Tensor
                  ) -> Tensor:
    """Relevance given or computed: a tensor is checked, a composite or method is run."""
    if isinstance(explanation, Tensor):
        return check_relevance(explanation.detach(), inputs)
    return explain_with(explanation, model, inputs, target)


def random_method(seed: Seed = None) -> Method:
    """A baseline "method" whose relevance is uniform noise in ``[0, 1)``.

    Parameters
    ----------
    seed
        An int, a :class:`torch.Generator` or ``None`` (torch's global generator); the
        generator is made once, so successive calls draw new noise.

    Returns
    -------
    callable
        ``method(model, inputs, target=None) -> Tensor``, input-shaped.
    """
    generator = make_generator(seed)

    def random_relevance(model: nn.Module, inputs: Tensor, target=None) -> Tensor:
        return rand_like(inputs.shape, generator, inputs)

    random_relevance.__name__ = "Random"
    return random_relevance


def explain_batched(explainer: Explainer, model: nn.Module, inputs: Tensor, target: Tensor,
                    batch_size: int, bar=None) -> Tensor:
    """:func:`explain_with` in chunks of ``batch_size`` samples (``bar``: a tqdm bar
    advanced once per chunk)."""
    pieces = []
    for start in range(0, inputs.shape[0], batch_size):
        stop = start + batch_size
        pieces.append(explain_with(explainer, model, inputs[start:stop], target[start:stop]))
        if bar is not None:
            bar.update(1)
    return torch.cat(pieces)


def feature_map(model: Union[nn.Module, None], inputs: Tensor, explanation: Explainer,
                target: Target) -> Tensor:
    """Relevance per feature ``(batch, n_features)``; a relevance tensor needs no model."""
    if isinstance(explanation, Tensor):
        check_inputs(inputs)
        relevance = check_relevance(explanation.detach(), inputs)
    else:
        if model is None:
            raise ValueError("a model is needed to explain with a composite or a method")
        x, _, t, _ = prepare(model, inputs, target, 256)
        relevance = relevance_for(explanation, model, x, t)
    return feature_relevance(relevance, inputs).flatten(1)
