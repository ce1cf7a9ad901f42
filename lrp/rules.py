"""LRP rules as modified forwards.

Each rule turns a module's true output ``z`` into a tensor with the same value whose
gradient implements the rule (see :mod:`lrp.core`).  Most rules are a
:class:`BasicRule` with one or two of its small pieces overridden:

* :meth:`BasicRule.modify_input` -- the activation the rule sees (``a -> a+``),
* :meth:`BasicRule.modify_parameter` -- weights and bias (``W -> W + gamma W+``),
* ``epsilon`` -- the stabilizer of the denominator.

A new rule is a few lines::

    class MyGamma(BasicRule):
        def __init__(self, gamma=0.5):
            super().__init__(epsilon=1e-6)
            self.gamma = gamma

        def modify_parameter(self, param, name):
            return param + self.gamma * param.clamp(min=0)

Notation in the docstrings: ``a`` layer input, ``z = W a + b`` output, ``R``
relevance, ``s = R_out / stab(z')``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .core import Gradient as _RuleGradient
from .core import Term, rule_output, surrogate_inputs
from .layers import is_weighted, layer_forward
from .ops import constant_statistics, identity_output, identity_ratio, surrogate

Params = Dict[str, Optional[Tensor]]

#: Normalization layers :class:`LayerNormRule` handles by type.
NORMALIZATION_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def own_parameters(module: nn.Module) -> Params:
    """``module``'s weight and bias, detached (``None`` where it has none)."""
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    return {
        "weight": weight.detach() if isinstance(weight, Tensor) else None,
        "bias": bias.detach() if isinstance(bias, Tensor) else None,
    }


def _format(value: Any) -> str:
    if isinstance(value, Tensor):
        if value.numel() == 1:
            return f"{value.item():g}"
        if value.numel() == 0:
            return f"tensor(shape {tuple(value.shape)})"
        low, high = value.min().item(), value.max().item()
        return f"tensor(shape {tuple(value.shape)}, range [{low:.4g}, {high:.4g}])"
    return f"{value:g}" if isinstance(value, float) else repr(value)


class Rule:
    """Base class of all rules.

    Subclasses implement :meth:`apply`; :meth:`prepare` precomputes whatever the
    rule needs from the module's parameters (modified parameters; reused while the
    parameters are unchanged), and :meth:`supports` says which modules the rule can
    be attached to.
    """

    #: Parameters shown by ``repr``; subclasses list their constructor arguments.
    _fields: Sequence[str] = ()
    #: Whether the rule leaves the module's gradient as it is: then a forward skips it
    #: unless its relevance is recorded or an observer (the audit) sees the calls.
    passive: bool = False

    def supports(self, module: nn.Module) -> bool:
        """Whether the rule can be attached to ``module``."""
        return True

    def prepare(self, module: nn.Module, params: Params) -> Any:
        """Precomputation for ``module`` from the parameters it computes with
        (``params``: ``{"weight": ..., "bias": ...}``, detached; a canonizer may have
        substituted them, e.g. BatchNorm fused in).  Default: the parameters."""
        return params

    def apply(self, module: nn.Module, inputs: tuple, output: Tensor, prepared: Any,
              recorder=None) -> Tensor:
        """Return the replacement output: value ``output``, gradient the rule."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={_format(getattr(self, f))}" for f in self._fields)
        return f"{type(self).__name__}({args})"


class BasicRule(Rule):
    """The generic rule ``R_j = a_j sum_i W'_ij R_i / stab(sum_l W'_il a'_l + b'_i)``.

    Parameters
    ----------
    epsilon
        Stabilizer added to the denominator with its sign (``z + epsilon sign(z)``).

    Override :meth:`modify_input` and/or :meth:`modify_parameter`.  When neither is
    overridden the denominator is the true output and no extra forward is run.
    """

    _fields = ("epsilon",)

    def __init__(self, epsilon: float = 1e-6):
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def modify_input(self, a: Tensor) -> Tensor:
        """The activation seen by the rule (default: unchanged)."""
        return a

    def modify_parameter(self, param: Tensor, name: str) -> Tensor:
        """Modified weight (``name == 'weight'``) or bias (default: unchanged)."""
        return param

    def _modifies_parameters(self) -> bool:
        return type(self).modify_parameter is not BasicRule.modify_parameter

    def _modifies_input(self) -> bool:
        return type(self).modify_input is not BasicRule.modify_input

    def supports(self, module: nn.Module) -> bool:
        return is_weighted(module) or not self._modifies_parameters()

    def prepare(self, module: nn.Module, params: Params) -> Params:
        if not self._modifies_parameters():
            return params
        return {k: None if p is None else self.modify_parameter(p, k) for k, p in params.items()}

    def terms(self, module: nn.Module, a: Tensor, output: Tensor, params: Params) -> List[Term]:
        """The modified forwards of this rule (default: one, from the modified pieces)."""
        if not self._modifies_parameters() and not self._modifies_input():
            return [Term(output)]
        x = self.modify_input(a)
        if not is_weighted(module):
            return [Term(layer_forward(module, x))]
        return [Term(layer_forward(module, x, params["weight"], params["bias"]))]

    def apply(self, module, inputs, output, prepared, recorder=None):
        return rule_output(output, self.terms(module, inputs[0], output, prepared),
                           self.epsilon, recorder)


class Epsilon(BasicRule):
    """LRP-epsilon: ``R_j = a_j sum_i W_ij R_i / (z_i + epsilon sign(z_i))``.

    Costs no extra forward.  Also the rule for parameter-free linear modules
    (average pooling, sums), where it is known as the Norm rule.
    """


class Zero(Epsilon):
    """LRP-0: ``R_j = a_j sum_i W_ij R_i / z_i`` (ratio ``0/0 := 0``)."""

    _fields = ()

    def __init__(self) -> None:
        super().__init__(epsilon=0.0)


class Norm(Epsilon):
    """Normalisation rule for sums and average pooling: LRP-epsilon on a parameter-free
    linear module, distributing relevance in proportion to the summands."""

    def __init__(self, epsilon: float = 1e-6):
        super().__init__(epsilon=epsilon)


class Gamma(BasicRule):
    """LRP-gamma: ``W -> W + gamma W+``, ``b -> b + gamma b+``."""

    _fields = ("gamma", "epsilon")

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6):
        super().__init__(epsilon)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def modify_parameter(self, param, name):
        return param + self.gamma * param.clamp(min=0)


def _positive(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.clamp(min=0)


def _negative(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.clamp(max=0)


#: Autograd nodes whose outputs are never negative (saves scanning the tensor).
_NON_NEGATIVE_NODES = frozenset({"ReluBackward0", "SigmoidBackward0",
                                 "SoftplusBackward0"})


def _has_negative(a: Tensor) -> bool:
    if a.grad_fn is not None and type(a.grad_fn).__name__ in _NON_NEGATIVE_NODES:
        return False
    return a.numel() > 0 and bool(a.amin() < 0)


def _split_forward(module: nn.Module, a: Tensor, w_pos_in: Tensor, w_neg_in: Tensor,
                   bias: Optional[Tensor]) -> Tensor:
    """``F(a+; w_pos_in) + F(a-; w_neg_in) + bias``; skips the a- half when ``a >= 0``."""
    if not _has_negative(a):
        return layer_forward(module, a, w_pos_in, bias)
    out = layer_forward(module, a.clamp(min=0), w_pos_in, bias)
    return out + layer_forward(module, a.clamp(max=0), w_neg_in, None)


class AlphaBeta(BasicRule):
    """LRP-alpha-beta: ``alpha`` times the positive, ``beta`` times the negative
    contributions, each normalised by its own sum (biases included by sign).

    ``alpha - beta`` must be 1.  Correct for negative inputs: the positive
    contributions are ``W+ a+ + W- a-``.
    """

    _fields = ("alpha", "beta")

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, epsilon: float = 1e-6):
        super().__init__(epsilon)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if abs(alpha - beta - 1.0) > 1e-9:
            raise ValueError(
                f"alpha - beta must equal 1 (conservation), got alpha={alpha}, beta={beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def supports(self, module):
        return is_weighted(module)

    def prepare(self, module, params):
        p = params
        return {"w+": _positive(p["weight"]), "w-": _negative(p["weight"]),
                "b+": _positive(p["bias"]), "b-": _negative(p["bias"])}

    def terms(self, module, a, output, params):
        positive = _split_forward(module, a, params["w+"], params["w-"], params["b+"])
        terms = [Term(positive, self.alpha)]
        if self.beta:
            negative = _split_forward(module, a, params["w-"], params["w+"], params["b-"])
            terms.append(Term(negative, -self.beta))
        return terms


class ZPlus(AlphaBeta):
    """LRP-z+: only positive contributions (``AlphaBeta(1, 0)``), fine for negative inputs."""

    _fields = ()

    def __init__(self, epsilon: float = 1e-6):
        super().__init__(alpha=1.0, beta=0.0, epsilon=epsilon)


class GeneralizedGamma(BasicRule):
    """Generalized LRP-gamma (Andéol et al.), also stable for negative outputs.

    Where ``z > 0``: weights ``W + gamma W+`` for ``a+`` and ``W + gamma W-`` for
    ``a-`` (bias ``b + gamma b+``); where ``z < 0`` the roles of ``W+`` and ``W-``
    swap (bias ``b + gamma b-``).  For ``a >= 0`` and ``z > 0`` this is exactly
    :class:`Gamma`; for ``z < 0`` it favours the contributions that agree with the
    output's sign, so the denominator never crosses zero.  That matters where a
    layer's negative outputs carry relevance, e.g. convolutions feeding a residual
    sum, where :class:`Gamma` becomes unstable.

    Cost: one extra forward of the layer (as Gamma) when its input is non-negative;
    the negative-output branch is only back-propagated when it carries relevance.
    """

    _fields = ("gamma",)

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6):
        super().__init__(epsilon)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def supports(self, module):
        return is_weighted(module)

    def prepare(self, module, params):
        w, b, g = params["weight"], params["bias"], self.gamma
        return {"weight": w, "bias": b, "w_up": w + g * w.clamp(min=0),
                "b_up": None if b is None else b + g * b.clamp(min=0)}

    def _down(self, params: Params) -> None:
        """Add ``W + g W-`` and ``b + g b-``, needed only for inputs with negative values."""
        if "w_down" not in params:
            w, b, g = params["weight"], params["bias"], self.gamma
            params["b_down"] = None if b is None else b + g * b.clamp(max=0)
            params["w_down"] = w + g * w.clamp(max=0)

    def terms(self, module, a, output, params):
        z = output.detach()
        if _has_negative(a):
            self._down(params)
            up = _split_forward(module, a, params["w_up"], params["w_down"], params["b_up"])
            down = _split_forward(module, a, params["w_down"], params["w_up"], params["b_down"])
            return [Term(up, 1.0, z > 0), Term(down, 1.0, z < 0)]
        return [Term(layer_forward(module, a, params["w_up"], params["b_up"])), Term(output)]

    def apply(self, module, inputs, output, prepared, recorder=None):
        terms = self.terms(module, inputs[0], output, prepared)
        gradient = (_SignedGammaGradient(self.gamma, self.epsilon)
                    if len(terms) == 2 and terms[1].output is output else None)
        return rule_output(output, terms, self.epsilon, recorder, gradient)


class _SignedGammaGradient(_RuleGradient):
    """Generalized gamma for a non-negative input, from one extra forward ``up``.

    With ``a >= 0``: ``up >= z`` (so ``stab(up) = up + eps`` wherever ``z > 0``), and
    ``W + g W- = (2 + g) W - (W + g W+)`` (likewise the bias), so the negative-output
    denominator is ``down = (2 + g) z - up <= z``, below zero wherever ``z < 0``.  Its
    gradient flows to the layer's own output and to ``up``.  That branch is skipped
    when no relevance sits on negative outputs (a ReLU follows; when the graph was
    not inspected, the incoming gradient is checked).

    The forward keeps ``factor = z / (up+ + eps)``: the up-term factor where ``z > 0``,
    finite everywhere, with the sign of ``z``, and ``z`` is recovered from it.
    """

    uses_rectified = True

    def __init__(self, gamma: float, epsilon: float):
        self.gamma = gamma
        self.epsilon = epsilon

    def forward(self, z, outputs):
        up = outputs[0]
        scale = up.clamp(min=0).add_(self.epsilon)
        return up, torch.div(z, scale, out=scale)

    def backward(self, grad, saved, rectified):
        up, factor = saved
        if rectified is True or (
                rectified is None and not torch.logical_and(factor < 0, grad != 0).any()):
            return [factor * grad, None]
        # Masks as clamps (boolean where() is slow on the CPU).  With k = 2 + g and
        # z- = min(z, 0): the z < 0 term is z- / (down - eps) = z- / (k d), where
        # d = z- - (up + eps) / k, and it vanishes where z >= 0.  Its gradient is k times
        # that to z, minus it to up.
        k = 2.0 + self.gamma
        z_neg = up.clamp(min=0).add_(self.epsilon).mul_(factor).clamp_(max=0)
        lower = torch.sub(z_neg, up, alpha=1.0 / k).sub_(self.epsilon / k)
        # d <= (z- - eps) / k (<= -eps / k) holds exactly for a >= 0; rounding (a
        # float16 forward rounds z and up separately) must not break it: it keeps
        # |z- / (k d)| <= 1.
        torch.minimum(lower, z_neg.sub(self.epsilon).div_(k), out=lower)
        lower = torch.div(z_neg, lower, out=lower).mul_(grad)
        upper = torch.clamp(factor, min=0, out=z_neg).mul_(grad).sub_(lower, alpha=1.0 / k)
        return [upper, lower]


class Flat(BasicRule):
    """LRP-flat: all weights one, no bias: ``R_j = sum_i R_i / n_i``.

    Its relevance is not of the form ``a * grad`` (zero inputs receive relevance);
    at the model input it is returned exactly.  Deeper in a network it is passed on
    as the ratio ``R_j / a_j``, so relevance on exactly-zero activations is lost.
    """

    _fields = ()

    def supports(self, module):
        return is_weighted(module)

    def prepare(self, module, params):
        return {"weight": torch.ones_like(params["weight"]), "bias": None}

    def terms(self, module, a, output, params):
        (ones,) = surrogate_inputs(a, [torch.ones_like(a)])
        return [Term(layer_forward(module, ones, params["weight"], None))]


class WSquare(Flat):
    """LRP-w^2: ``R_j = sum_i W_ij^2 R_i / sum_l W_il^2`` (input-independent, like Flat)."""

    def prepare(self, module, params):
        return {"weight": params["weight"] ** 2, "bias": None}


class ZBox(BasicRule):
    """LRP-z^B for bounded inputs ``low <= a <= high``:

    ``R_j = sum_i (W_ij a_j - W+_ij l_j - W-_ij h_j) R_i / sum_l (...)``.

    Parameters
    ----------
    low, high
        Bounds: scalars, per-channel 1-D tensors (length = input channels) or
        tensors broadcastable to the input.
    """

    _fields = ("low", "high")

    def __init__(self, low: Union[float, Tensor], high: Union[float, Tensor],
                 epsilon: float = 1e-6):
        super().__init__(epsilon)
        # float64 so that Python-float bounds keep their precision for float64 inputs
        self.low = low.detach() if isinstance(low, Tensor) else torch.tensor(low, dtype=torch.float64)
        self.high = (high.detach() if isinstance(high, Tensor)
                     else torch.tensor(high, dtype=torch.float64))
        try:
            ordered = bool((self.low <= self.high).all())
        except RuntimeError as err:
            raise ValueError(f"ZBox bounds have incompatible shapes {tuple(self.low.shape)} "
                             f"and {tuple(self.high.shape)}") from err
        if not ordered:
            raise ValueError("ZBox requires low <= high everywhere")

    def supports(self, module):
        return is_weighted(module)

    def prepare(self, module, params):
        w = params["weight"]
        params = {"weight": w, "w+": w.clamp(min=0), "w-": w.clamp(max=0)}
        if getattr(module, "groups", 1) == 1:
            # One layer call on the inputs stacked along the channel axis instead of
            # three: the input-channel axis of the weight is 1 (0 for transposed conv).
            axis = 0 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 1
            params["stacked"] = torch.cat([w, -params["w+"], -params["w-"]], dim=axis)
            params["input_axis"] = -1 if isinstance(module, nn.Linear) else 1
        return params

    def _bound(self, bound: Tensor, a: Tensor) -> Tensor:
        b = bound.to(device=a.device, dtype=a.dtype)
        if b.dim() == 1 and a.dim() > 2 and b.numel() == a.shape[1] and b.numel() > 1:
            b = b.view(1, -1, *([1] * (a.dim() - 2)))
        try:
            return b.expand_as(a)
        except RuntimeError:
            raise ValueError(
                f"ZBox bound of shape {tuple(bound.shape)} does not fit the layer input of "
                f"shape {tuple(a.shape)}: use a scalar, one value per channel "
                f"({a.shape[1]}), or a tensor broadcastable to the input") from None

    def terms(self, module, a, output, params):
        low, high = surrogate_inputs(a, [self._bound(self.low, a), self._bound(self.high, a)])
        if "stacked" in params and a.dim() > 1:
            stacked = torch.cat([a, low, high], dim=params["input_axis"])
            return [Term(layer_forward(module, stacked, params["stacked"], None))]
        z = (layer_forward(module, a, params["weight"], None)
             - layer_forward(module, low, params["w+"], None)
             - layer_forward(module, high, params["w-"], None))
        return [Term(z)]


class Gradient(Rule):
    """The module's own gradient.  On a linear layer (dense, convolution) that is
    LRP-0 in the engine's ratio form, at no cost: no ratio, no extra forward.

    It differs from :class:`Zero` only where an output is exactly zero: Zero's
    ``0/0 := 0`` passes nothing back there, the gradient passes ``W^T g`` on, whose
    relevance sums to zero over the inputs.  The transformer presets use it on linear
    layers, as LXT's efficient implementation does.
    """

    _fields = ()
    passive = True

    def prepare(self, module, params):
        return None

    def apply(self, module, inputs, output, prepared, recorder=None):
        return output if recorder is None else surrogate(output, output, recorder)


class Pass(Rule):
    """Pass-through: ``R_in = R_out`` for shape-preserving modules.

    This is also the identity rule for element-wise activations (sigmoid, tanh,
    GELU, SiLU, softplus, ELU, leaky ReLU): the ratio passed back is
    ``f(a) / a`` (stabilized, or in closed form for SiLU and GELU, see
    :func:`lrp.ops.identity_ratio`) instead of ``f'(a)``.
    """

    _fields = ()

    def __init__(self, epsilon: float = 1e-12):
        self.epsilon = float(epsilon)

    def apply(self, module, inputs, output, prepared, recorder=None):
        a = inputs[0]
        if not isinstance(a, Tensor) or a.shape != output.shape:
            raise ValueError(
                f"Pass needs a module whose output has its input's shape; "
                f"{type(module).__name__} maps {tuple(getattr(a, 'shape', ()))} to "
                f"{tuple(output.shape)}")
        if a is output or not a.requires_grad:  # e.g. a BatchNorm merged by a canonizer
            return output
        return identity_output(a, output, self.epsilon, recorder, identity_ratio(module))


class LayerNormRule(Rule):
    """LRP for normalization layers (Ali et al. 2022): the statistic (standard
    deviation, RMS) is a constant, so the layer is linear in its input and relevance
    passes through the centring and the affine map by LRP-0 (the bias absorbs its
    share).

    Runs the layer's own forward with its statistics held constant
    (:func:`lrp.ops.constant_statistics`), so every normalization normalizes over the
    axes it really uses: ``nn.LayerNorm`` (trailing dims), torchvision's
    ``LayerNorm2d`` (the channel axis, via a permute), ``nn.GroupNorm``,
    ``nn.RMSNorm``, instance norm, and norms written with ``torch.rsqrt``.
    """

    _fields = ()

    def supports(self, module):
        return isinstance(module, NORMALIZATION_LAYERS) or hasattr(module, "normalized_shape")

    def prepare(self, module, params):
        return None

    def apply(self, module, inputs, output, prepared, recorder=None):
        with constant_statistics():
            z = module.forward(inputs[0])
        # z is the output computed as a linear map: LRP-0 is its gradient
        return surrogate(output, z, recorder)


class _GuidedGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, z):  # type: ignore[override]
        ctx.save_for_backward(a)
        return z.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (a,) = ctx.saved_tensors
        return grad.clamp(min=0) * (a > 0).to(grad.dtype), None


class GuidedBackprop(Rule):
    """Guided backpropagation for ReLU: only positive gradients pass (where ``a > 0``)."""

    _fields = ()

    def supports(self, module):
        return isinstance(module, nn.ReLU)

    def apply(self, module, inputs, output, prepared, recorder=None):
        return _GuidedGradient.apply(inputs[0], output.detach())


__all__ = [
    "Rule", "BasicRule", "Gradient", "Zero", "Epsilon", "Norm", "Gamma", "AlphaBeta", "ZPlus",
    "GeneralizedGamma", "Flat", "WSquare", "ZBox", "Pass", "LayerNormRule",
    "GuidedBackprop",
]
