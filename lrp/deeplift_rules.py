"""DeepLift multipliers as rules of the propagation engine (see :mod:`lrp.deeplift`).

DeepLift (Shrikumar et al. 2017) backpropagates *multipliers* ``m = Δy / Δx``
(differences from a reference input) with the chain rule.  For every linear
operation the multiplier is the ordinary gradient, so, as in LRP, only the
non-linear modules need a rule: a modified forward whose value is the true output
and whose gradient is the multiplier (:func:`lrp.core.rule_output`).

A call proceeds in passes over the same model with the rules of this module
attached:

1. the reference forward, under ``torch.no_grad()``: every ruled module records its
   input and output, per call in call order (a module may be called several times
   per forward, e.g. one ``nn.ReLU`` per ResNet block);
2. Rescale: the forward on the input, with gradients, in which each rule pops its
   recorded reference call and returns ``y`` with gradient ``m * grad``;
   RevealCancel: a forward on the input without gradients (recording as in 1.),
   then a forward of the two streams ``[Δx+; Δx-]`` in one doubled batch, in which
   weighted layers and batch norms apply ``W+`` / ``W-`` to the streams (the
   positive and negative terms ``w_i Δx_i``), the non-linearities return
   ``[Δy+; Δy-]`` and split their total again by sign for the next layer.

Per-call state lives in a :class:`DeepLiftState` activated with a context variable,
never on the modules, so the rules themselves are stateless singletons.

References come in *groups*: ``g`` reference rows for ``g * n`` input rows, input
row ``i`` paired with reference row ``i // n`` (one reference for all: ``g = 1``;
one per sample: ``n = 1``; DeepLiftShap chunks: several of each).  Recorded
reference tensors keep their ``g`` rows and broadcast against ``(g, n, ...)`` views.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Callable, Deque, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .audit import Auditor, op_name
from .composites import Activation
from .core import Gradient, Term, rule_output
from .layers import is_weighted, layer_forward
from .ops import OpRule, _in_place_result, _out_of_place
from .rules import Rule
from .scope import current_module

#: Element-wise activations DeepLift has a rule for (scalar functions, no parameters).
ELEMENTWISE = (nn.ReLU,) + Activation + (nn.LogSigmoid, nn.Softsign, nn.Tanhshrink)

_MAX_POOL = {
    nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d,
}
_ADAPTIVE_MAX_POOL = {
    nn.AdaptiveMaxPool1d: F.adaptive_max_pool1d, nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d,
    nn.AdaptiveMaxPool3d: F.adaptive_max_pool3d,
}
#: Max-pooling modules DeepLift has a rule for.
MAX_POOLING = tuple(_MAX_POOL) + tuple(_ADAPTIVE_MAX_POOL)

RULES = ("rescale", "reveal_cancel")


# --------------------------------------------------------------------------- state

@dataclass
class _Call:
    """One recorded call of a ruled module (no-grad pass)."""

    input: Tensor
    output: Tensor
    index: Optional[Tensor]  # max pooling: argmax positions, flat over the spatial dims
    version: Tuple[int, int]


class DeepLiftState:
    """Recorded calls of the ruled modules and the current pass of one DeepLift call.

    Parameters
    ----------
    groups
        Number of reference rows ``g``; input rows are ``g * n``.
    names
        Module -> name, for error messages.
    """

    def __init__(self, groups: int, names: Dict[nn.Module, str]):
        self.groups = groups
        self.names = names
        self.phase = ""
        self.calls: Dict[str, Dict[nn.Module, Deque[_Call]]] = {"reference": {}, "input": {}}

    def record(self, module: nn.Module, a: Tensor, y: Tensor) -> None:
        index = pool_index(module, a) if isinstance(module, MAX_POOLING) else None
        queue = self.calls[self.phase].setdefault(module, deque())
        queue.append(_Call(a, y, index, (a._version, y._version)))

    def pop(self, phase: str, module: nn.Module) -> _Call:
        queue = self.calls[phase].get(module)
        if not queue:
            raise RuntimeError(
                f"DeepLift: module {self.names.get(module, '?')!r} was called more often on "
                f"the inputs than on the reference; the model's control flow must not "
                f"depend on the input values")
        call = queue.popleft()
        if (call.input._version, call.output._version) != call.version:
            raise RuntimeError(
                f"DeepLift: the model modified the input or output of "
                f"{self.names.get(module, '?')!r} in place after the call; DeepLift needs "
                f"them unchanged (make the later operation out-of-place)")
        return call

    def check_consumed(self) -> None:
        left = [self.names.get(m, "?") for calls in self.calls.values()
                for m, q in calls.items() if q]
        if left:
            raise RuntimeError(
                f"DeepLift: modules {sorted(set(left))} were called more often on the "
                f"reference than on the inputs; the model's control flow must not depend "
                f"on the input values")

    def grouped(self, t: Tensor) -> Tensor:
        """Rows ``(g * n, ...)`` as ``(g, n, ...)``."""
        return t.reshape(self.groups, t.shape[0] // self.groups, *t.shape[1:])


_STATE: contextvars.ContextVar[Optional[DeepLiftState]] = contextvars.ContextVar(
    "lrp_deeplift_state", default=None)


@contextlib.contextmanager
def activated(state: DeepLiftState) -> Iterator[DeepLiftState]:
    """Make ``state`` the one the rules use inside the block."""
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


def _state() -> DeepLiftState:
    state = _STATE.get()
    if state is None:
        raise RuntimeError("DeepLift rules fired outside lrp.deeplift()")
    return state


def record_call(module: nn.Module, args: tuple, output) -> None:
    """Scope observer: record input and output of the non-linear modules in the
    no-grad passes (reference, and RevealCancel's true input)."""
    state = _STATE.get()
    if (state is not None and state.phase in state.calls and not torch.is_grad_enabled()
            and isinstance(module, ELEMENTWISE + MAX_POOLING)
            and args and isinstance(args[0], Tensor) and isinstance(output, Tensor)):
        state.record(module, args[0], output)
    return None


def _defaults(func: Callable, args: tuple, kwargs: dict) -> Dict[str, object]:
    """The arguments of a functional call by parameter name (defaults filled in)."""
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return {}
    bound.apply_defaults()
    return dict(bound.arguments)


def _pool_module(kind: type, a: Dict[str, object]) -> nn.Module:
    if kind in _ADAPTIVE_MAX_POOL:
        return kind(a["output_size"])
    return kind(a["kernel_size"], a.get("stride"), a.get("padding", 0), a.get("dilation", 1),
                ceil_mode=bool(a.get("ceil_mode", False)))


#: Functional operation -> the equivalent module (built from the call's arguments).
_OP_MODULES: Dict[Callable, Callable[[Dict[str, object]], nn.Module]] = {}
for _names, _make in (
        (("relu", "relu_"), lambda a: nn.ReLU()),
        (("leaky_relu", "leaky_relu_"), lambda a: nn.LeakyReLU(a.get("negative_slope", 0.01))),
        (("sigmoid", "sigmoid_", "expit"), lambda a: nn.Sigmoid()),
        (("tanh", "tanh_"), lambda a: nn.Tanh()),
        (("gelu",), lambda a: nn.GELU(approximate=a.get("approximate", "none"))),
        (("silu",), lambda a: nn.SiLU()), (("mish",), lambda a: nn.Mish()),
        (("hardswish",), lambda a: nn.Hardswish()), (("hardsigmoid",), lambda a: nn.Hardsigmoid()),
        (("softplus",), lambda a: nn.Softplus(a.get("beta", 1.0), a.get("threshold", 20.0))),
        (("elu", "elu_"), lambda a: nn.ELU(a.get("alpha", 1.0))),
        (("selu", "selu_"), lambda a: nn.SELU()),
        (("celu", "celu_"), lambda a: nn.CELU(a.get("alpha", 1.0))),
        (("hardtanh", "hardtanh_"), lambda a: nn.Hardtanh(a.get("min_val", -1.0), a.get("max_val", 1.0))),
        (("relu6",), lambda a: nn.ReLU6()), (("logsigmoid",), lambda a: nn.LogSigmoid()),
        (("softsign",), lambda a: nn.Softsign()), (("tanhshrink",), lambda a: nn.Tanhshrink()),
        (("threshold", "threshold_"), lambda a: nn.Threshold(a["threshold"], a["value"]))):
    for _name in _names:
        for _space in (torch, F, Tensor, torch.special):
            _fn = getattr(_space, _name, None)
            if _fn is not None:
                _OP_MODULES.setdefault(_fn, _make)
for _kind, _fn in list(_MAX_POOL.items()) + list(_ADAPTIVE_MAX_POOL.items()):
    _OP_MODULES[_fn] = partial(_pool_module, _kind)


class DeepLiftOps:
    """DeepLift for functional non-linearities (``F.relu(x)`` in a ``forward``,
    ``torch.sigmoid``, ``F.max_pool2d``, ...): each call site gets the module that
    computes the same function (``nn.ReLU``, ``nn.MaxPool2d(...)``), built once
    from the call's arguments, and that module's rule -- recorded in the no-grad
    passes, applied in the gradient pass, exactly like a module of the model.

    An op table for :class:`lrp.scope.Scope` (``rule(func, module, stack)``).
    """

    def __init__(self, rule: str, names: Dict[nn.Module, str]):
        self.reveal = rule == "reveal_cancel"
        self.names = names
        self._sites: Dict[tuple, nn.Module] = {}

    def __bool__(self) -> bool:
        return True

    def rule(self, func: Callable, module: Optional[nn.Module], stack) -> Optional["_OpSite"]:
        if func not in _OP_MODULES:
            return None
        return _OpSite(self, func)

    def site(self, func: Callable, args: tuple, kwargs: dict) -> nn.Module:
        """The module standing for this call site (same object in every pass)."""
        owner = current_module()
        a = _defaults(func, args, kwargs)
        settings = tuple(sorted((k, repr(v)) for k, v in a.items()
                                if k not in ("input", "self", "inplace", "return_indices")))
        key = (func, id(owner), settings)
        module = self._sites.get(key)
        if module is None:
            module = self._sites[key] = _OP_MODULES[func](a)
            where = self.names.get(owner, "") if owner is not None else ""
            state = _STATE.get()
            if state is not None:
                state.names[module] = f"{where or '<model forward>'}: {getattr(func, '__name__', func)}"
        return module


class _OpSite(OpRule):
    """The DeepLift op rule of one intercepted call."""

    def __init__(self, ops: DeepLiftOps, func: Callable):
        self.ops = ops
        self.func = func

    def apply(self, func, args, kwargs):
        module = self.ops.site(func, args, kwargs)
        x = args[0]
        plain, plain_kwargs, inplace = _out_of_place(func, args, kwargs)
        out = plain(*args, **plain_kwargs)
        if isinstance(out, tuple):  # return_indices=True: leave it alone
            return out
        if not torch.is_grad_enabled():
            # copies: an in-place call overwrites its input, and later functional code
            # often works in place on an op's output (``F.relu(h, inplace=True)``)
            record_call(module, (x.clone() if inplace else x,), out.clone())
            return _in_place_result(x, out) if inplace else out
        if isinstance(module, MAX_POOLING):
            rule = _REVEAL_POOL if self.ops.reveal else _RESCALE_POOL
        else:
            rule = _REVEAL if self.ops.reveal else _RESCALE
        result = rule.apply(module, (x,), out, None)
        return _in_place_result(x, result) if inplace else result


# --------------------------------------------------------------------------- helpers

class _Multiplier(Gradient):
    """Gradient ``m_k * grad`` to term ``k``, for multipliers computed in the forward."""

    vmap_safe = True

    def __init__(self, *factors: Tensor):
        self._factors: Tuple[Tensor, ...] = factors

    def forward(self, z, outputs):
        factors, self._factors = self._factors, ()
        return factors

    def backward(self, grad, saved, rectified):
        return [m * grad for m in saved]


def _tolerance(dtype: torch.dtype) -> float:
    # the classical finite-difference step: the secant's rounding error eps*|y|/|dx|
    # and the midpoint derivative's error f'''*dx^3/24 are both negligible there
    return math.sqrt(torch.finfo(dtype).eps)


def _small(d: Tensor, x0: Tensor) -> Tensor:
    return d.abs() <= _tolerance(d.dtype) * (1.0 + x0.abs())


def _value(module: nn.Module, t: Tensor) -> Tensor:
    with torch.no_grad():
        return module.forward(t)


def _derivative(module: nn.Module, t: Tensor) -> Tensor:
    """``f'(t)`` of an element-wise module, by autograd on its own forward."""
    with torch.enable_grad():
        leaf = t.detach().requires_grad_(True)
        out = module.forward(leaf.clone())  # clone: some forwards work in place
        (grad,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
    return grad


def _divide(num: Tensor, den: Tensor, small: Tensor,
            fallback: Callable[[Tensor], Tensor]) -> Tensor:
    """``num / den`` (in place in ``num``); ``fallback(small)`` where ``small``."""
    m = num.div_(den)
    if bool(small.any()):
        m[small] = fallback(small).to(m.dtype)
    return m


def _at(t: Tensor, like: Tensor, mask: Tensor) -> Tensor:
    return t.expand_as(like)[mask]


def pool_index(module: nn.Module, a: Tensor) -> Tensor:
    """Argmax positions of a max-pooling module on ``a``, flat over the spatial dims."""
    with torch.no_grad():
        for kind, fn in _MAX_POOL.items():
            if isinstance(module, kind):
                m = module
                _, index = fn(a, m.kernel_size, m.stride, m.padding, m.dilation,
                              ceil_mode=m.ceil_mode, return_indices=True)
                break
        else:
            fn = next(f for k, f in _ADAPTIVE_MAX_POOL.items() if isinstance(module, k))
            _, index = fn(a, module.output_size, return_indices=True)
    if index.dim() < 3:
        raise ValueError(f"DeepLift needs batched (N, C, ...) inputs to {type(module).__name__}")
    return index


def _output_index(module: nn.Module, a: Tensor, output: Tensor) -> Tensor:
    """The argmax positions of a max-pooling call: those saved by autograd for the
    backward when available (2-D, 3-D and adaptive pooling), else recomputed."""
    index = getattr(output.grad_fn, "_saved_result1", None)
    if (isinstance(index, Tensor) and index.dtype == torch.int64
            and index.shape == output.shape):
        return index
    return pool_index(module, a)


def _winner_weights(state: DeepLiftState, x: Tensor, y: Tensor, index: Tensor,
                    ref: _Call) -> Tuple[Tensor, Tensor, Tensor]:
    """Weights ``lam`` of the input's winner ``a`` (``1 - lam`` go to the reference's
    winner ``b``) in each pooling window, with ``a`` and ``b``; all ``(g, n, C, L_out)``
    (spatial dims flat).

    ``Δy = x_a - x0_b`` lies between ``Δx_b`` and ``Δx_a`` (``x_b <= x_a``,
    ``x0_a <= x0_b``), so ``lam = (x_a - x_b) / ((x_a - x_b) + (x0_b - x0_a))`` in
    ``[0, 1]`` gives ``lam Δx_a + (1 - lam) Δx_b = Δy`` exactly; ``lam = 1`` where
    both winners coincide (the gradient).
    """
    g = state.grouped
    a = g(index.flatten(2))
    b = ref.index.flatten(2).unsqueeze(1).expand_as(a)
    x_b = g(x.flatten(2)).gather(-1, b)
    x0 = ref.input.flatten(2).unsqueeze(1)
    x0_a = x0.expand(*a.shape[:-1], x0.shape[-1]).gather(-1, a)
    num = g(y.flatten(2)) - x_b
    den = num + (ref.output.flatten(2).unsqueeze(1) - x0_a)
    return num.div_(den).nan_to_num_(nan=1.0), a, b  # 0 / 0: both winners coincide


# --------------------------------------------------------------------------- Rescale

def _relu_secant(dy: Tensor, d: Tensor, x: Tensor) -> Tensor:
    """``Δy / Δx`` of ReLU (in place in ``dy``), exact: both sides positive gives
    exactly 1, both non-positive 0, mixed signs divide without cancellation.  Only
    ``Δx == 0`` needs the gradient ``1[x > 0]``; there ``0 / 0`` is NaN, and the
    secants lie in ``[0, 1]``, so one sum finds them (cheaper than a mask)."""
    m = dy.div_(d)
    if bool(m.sum().isnan()):
        nan = m.isnan()
        m[nan] = (x[nan] > 0).to(m.dtype)
    return m


class Rescale(Rule):
    """DeepLift Rescale for an element-wise activation: ``m = Δy / Δx``.

    Where ``|Δx| <= sqrt(eps) (1 + |x0|)`` the secant is replaced by the derivative
    at the midpoint ``f'((x + x0) / 2)`` (its limit, accurate to ``O(Δx^2)``); for
    ReLU only where ``Δx == 0``, since its secant is exact otherwise.
    """

    def supports(self, module):
        return isinstance(module, ELEMENTWISE)

    def apply(self, module, inputs, output, prepared, recorder=None):
        state = _state()
        ref = state.pop("reference", module)
        g = state.grouped
        x, x0 = g(inputs[0].detach()), ref.input.unsqueeze(1)
        d = x - x0
        dy = g(output.detach()) - ref.output.unsqueeze(1)
        if type(module) is nn.ReLU:
            m = _relu_secant(dy, d, x)
        else:
            m = _divide(dy, d, _small(d, x0),
                        lambda s: _derivative(module, (x[s] + _at(x0, x, s)) / 2))
        return rule_output(output, [Term(inputs[0])], 0.0, recorder,
                           _Multiplier(m.reshape(output.shape)))


class RescaleMaxPool(Rule):
    """DeepLift for max pooling, exact: the two-winner scheme.

    In each window, ``Δy = max(x) - max(x0)`` is split between the input's winner
    ``a`` and the reference's winner ``b`` with multipliers ``lam`` and ``1 - lam``
    in ``[0, 1]`` chosen so that ``lam Δx_a + (1 - lam) Δx_b = Δy``.  Where the
    winners coincide this is the ordinary max-pooling gradient.
    """

    def supports(self, module):
        return isinstance(module, MAX_POOLING)

    def apply(self, module, inputs, output, prepared, recorder=None):
        state = _state()
        ref = state.pop("reference", module)
        x = inputs[0]
        index = _output_index(module, x.detach(), output)
        lam, _, b = _winner_weights(state, x.detach(), output.detach(), index, ref)
        if bool((lam == 1).all()):
            return output  # the gradient routes to the common winner: exact
        x_b = state.grouped(x.flatten(2)).gather(-1, b).reshape(output.shape)
        lam = lam.reshape(output.shape)
        return rule_output(output, [Term(output), Term(x_b)], 0.0, recorder,
                           _Multiplier(lam, 1.0 - lam))


# --------------------------------------------------------------------------- RevealCancel

def _halves(s: Tensor) -> Tuple[Tensor, Tensor]:
    # chunk, not slicing: its backward concatenates instead of zero-filling twice
    top, bottom = s.chunk(2)
    return top, bottom


def _resplit(s: Tensor) -> Tensor:
    """Streams ``[a; b]`` -> ``[Δ+; Δ-]`` of their total ``Δ = a + b``.

    The next weighted layer then separates the positive and negative terms
    ``w_i Δx_i`` of its own input's difference (the paper's linear rule), instead of
    carrying the two streams of earlier layers on (their magnitudes would grow with
    depth, like ``|W|^depth``, and cancel).  Backward: the gradient of the half that
    holds ``Δ`` goes to both input halves; where ``Δ = 0`` the mean of both halves'
    gradients (the paper's multipliers ``0.5 w_i`` for ``Δx_i = 0``, whose parts may
    cancel).
    """
    top, bottom = _halves(s)
    total = top + bottom
    sign = total.detach().sign()
    weights = torch.stack([sign, sign.neg()]).add_(1.0).mul_(0.5)  # 1, 0 or 1/2 at zero
    return (total * weights).flatten(0, 1)


def check_streams(where: str, p: Tensor, n: Tensor, x0: Tensor, x: Tensor) -> None:
    """The streams must add up to the true difference ``x - x0`` at every rule and at
    the output, else some operation between modules is not positively homogeneous."""
    def peak(t: Tensor) -> Tensor:
        return torch.linalg.vector_norm(t, float("inf"))

    err = peak(x0 + p + n - x)
    scale = peak(p) + peak(n) + peak(x0) + peak(x)
    if bool(err > 10 * _tolerance(x.dtype) * (scale + 1)):
        raise ValueError(
            f"DeepLift RevealCancel: the positive and negative parts of the difference "
            f"from the reference do not add up at {where} (error "
            f"{float(err):.3g}).  RevealCancel supports models whose operations between "
            f"modules are sums, concatenations, reshapes and average pooling, with "
            f"Linear/Conv/BatchNorm(eval) modules; use rule='rescale' for this model")


def _streams(module: nn.Module, s: Tensor) -> Tuple[DeepLiftState, _Call, _Call, Tensor, Tensor]:
    """For a stream-pass call on ``s`` (positive stream over negative stream): the
    state, this module's reference and true-input records, and the two streams
    grouped by reference, checked to add up to ``x - x0``."""
    state = _state()
    ref = state.pop("reference", module)
    true = state.pop("input", module)
    top, bottom = _halves(s.detach())
    p, n = state.grouped(top), state.grouped(bottom)
    check_streams(repr(state.names.get(module, "?")), p, n, ref.input.unsqueeze(1),
                  state.grouped(true.input))
    return state, ref, true, p, n


class RevealCancel(Rule):
    """DeepLift RevealCancel for an element-wise activation (stream pass).

    With ``x0`` the reference input, ``Δx+`` / ``Δx-`` the streams and ``x`` the
    true input (``x = x0 + Δx+ + Δx-``)::

        Δy+ = 1/2 (f(x0 + Δx+) - f(x0)) + 1/2 (f(x) - f(x0 + Δx-))
        Δy- = 1/2 (f(x0 + Δx-) - f(x0)) + 1/2 (f(x) - f(x0 + Δx+))
        m+ = Δy+ / Δx+,  m- = Δy- / Δx-

    (``Δy+ + Δy- = f(x) - f(x0)`` exactly).  Where a stream is near zero its
    multiplier is the limit ``1/2 (f'(x0 + Δx±/2) + f'(x - Δx±/2))``.
    """

    def supports(self, module):
        return isinstance(module, ELEMENTWISE)

    def apply(self, module, inputs, output, prepared, recorder=None):
        s = inputs[0]
        state, ref, true, p, n = _streams(module, s)
        x0, y0 = ref.input.unsqueeze(1), ref.output.unsqueeze(1)
        x, y = state.grouped(true.input), state.grouped(true.output)
        f_p, f_n = _value(module, x0 + p), _value(module, x0 + n)
        dy_p = (f_p - y0).add_(y - f_n).mul_(0.5)
        dy_n = (f_n - y0).add_(y - f_p).mul_(0.5)

        def limit(h: Tensor) -> Callable[[Tensor], Tensor]:
            def fallback(mask: Tensor) -> Tensor:
                hm, x0m, xm = h[mask], _at(x0, h, mask), x[mask]
                return 0.5 * (_derivative(module, x0m + hm / 2) + _derivative(module, xm - hm / 2))
            return fallback

        m_p = _divide(dy_p.clone(), p, _small(p, x0), limit(p))
        m_n = _divide(dy_n.clone(), n, _small(n, x0), limit(n))
        half = (s.shape[0] // 2,) + s.shape[1:]
        z = torch.cat([dy_p.reshape(half), dy_n.reshape(half)])
        m = torch.cat([m_p.reshape(half), m_n.reshape(half)])
        return _resplit(rule_output(z, [Term(s)], 0.0, recorder, _Multiplier(m)))


class RevealCancelMaxPool(Rule):
    """Max pooling on the streams: the two-winner weights of :class:`RescaleMaxPool`
    (from the true input and the reference) applied to both streams."""

    def supports(self, module):
        return isinstance(module, MAX_POOLING)

    def apply(self, module, inputs, output, prepared, recorder=None):
        s = inputs[0]
        state, ref, true, _, _ = _streams(module, s)
        g = state.grouped
        lam, a, b = _winner_weights(state, true.input, true.output, true.index, ref)
        shape = (s.shape[0] // 2,) + true.output.shape[1:]

        def pooled(h: Tensor) -> Tensor:
            hf = g(h.flatten(2))
            out = lam * hf.gather(-1, a) + (1.0 - lam) * hf.gather(-1, b)
            return out.reshape(shape)

        top, bottom = _halves(s)
        return _resplit(torch.cat([pooled(top), pooled(bottom)]))


class SignedLinear(Rule):
    """A weighted layer on the streams: ``[W+ Δx+ + W- Δx-; W- Δx+ + W+ Δx-]`` (no bias).

    ``W+ Δx+ + W- Δx- = W+ (Δx+ - Δx-) + W Δx-`` for any two streams, and the
    module's own output on the streams, ``[W Δx+ + b; W Δx- + b]`` (computed anyway),
    gives ``W Δx-`` and the total ``W Δx``: one more layer call on half the rows.
    """

    def supports(self, module):
        return is_weighted(module)

    def prepare(self, module, params):
        w = params["weight"]
        return {"w+": w.clamp(min=0), "w-": w.clamp(max=0), "w": w, "b": params["bias"]}

    def apply(self, module, inputs, output, prepared, recorder=None):
        p, n = _halves(inputs[0])
        out_p, out_n = _halves(output)
        bias = prepared["b"]
        if bias is None:
            shape: Optional[Tuple[int, ...]] = None
        elif isinstance(module, nn.Linear):
            shape = (-1,)
        elif isinstance(module, nn.modules.conv._ConvNd):
            shape = (-1,) + (1,) * (output.dim() - 2)
        else:  # a registered layer type: where its bias goes is unknown
            out_p = layer_forward(module, p, prepared["w"], None)
            out_n = layer_forward(module, n, prepared["w"], None)
            shape = None
        if shape is not None:
            b = bias.detach().view(shape)
            out_p, out_n = out_p - b, out_n - b
        positive = layer_forward(module, p - n, prepared["w+"], None) + out_n
        return torch.cat([positive, out_p + out_n - positive])


class SignedBatchNorm(Rule):
    """Batch norm (eval mode) on the streams: its per-channel scale split by sign."""

    def supports(self, module):
        return isinstance(module, nn.modules.batchnorm._BatchNorm)

    def prepare(self, module, params):
        if module.running_var is None:
            return None
        scale = torch.rsqrt(module.running_var.detach() + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.detach()
        return {"s+": scale.clamp(min=0), "s-": scale.clamp(max=0)}

    def apply(self, module, inputs, output, prepared, recorder=None):
        if module.training or prepared is None:
            raise ValueError(f"DeepLift RevealCancel needs {type(module).__name__} in eval "
                             f"mode with running statistics (call model.eval())")
        s = inputs[0]
        shape = (1, -1) + (1,) * (s.dim() - 2)
        pos, neg = prepared["s+"].view(shape), prepared["s-"].view(shape)
        p, n = _halves(s)
        return torch.cat([pos * p + neg * n, neg * p + pos * n])


_RESCALE, _RESCALE_POOL = Rescale(), RescaleMaxPool()
_REVEAL, _REVEAL_POOL = RevealCancel(), RevealCancelMaxPool()
_SIGNED_LINEAR, _SIGNED_NORM = SignedLinear(), SignedBatchNorm()


def rules_for(model: nn.Module, rule: str) -> Dict[str, Rule]:
    """The DeepLift rule of every module that needs one, by module name."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    reveal = rule == "reveal_cancel"
    mapping: Dict[str, Rule] = {}
    for name, module in model.named_modules():
        if isinstance(module, ELEMENTWISE):
            mapping[name] = _REVEAL if reveal else _RESCALE
        elif isinstance(module, MAX_POOLING) and not getattr(module, "return_indices", False):
            mapping[name] = _REVEAL_POOL if reveal else _RESCALE_POOL
        elif reveal and is_weighted(module):
            mapping[name] = _SIGNED_LINEAR
        elif reveal and _SIGNED_NORM.supports(module):
            mapping[name] = _SIGNED_NORM
    return mapping


# --------------------------------------------------------------------------- audit

#: Operations whose gradient is an LRP rule but not a DeepLift multiplier.
_NOT_MULTIPLIERS = {"Relu", "Threshold", "LeakyRelu", "MaxPool1D", "MaxPool2DWithIndices",
                    "MaxPool3DWithIndices", "MaxPool2D", "AdaptiveMaxPool1D",
                    "AdaptiveMaxPool2D", "AdaptiveMaxPool3D"}


class DeepLiftAuditor(Auditor):
    """The coverage audit for DeepLift: ReLU and max pooling outside a ruled module
    (``torch.relu``, ``F.max_pool2d`` in a ``forward``) are uncovered too, since
    their gradient is not the DeepLift multiplier."""

    def _uncovered(self, node) -> bool:
        return op_name(node) in _NOT_MULTIPLIERS or super()._uncovered(node)


def uncovered_message(report) -> str:
    return (f"{report}\nDeepLift: summation-to-delta does not hold through these "
            f"operations (see Explanation.convergence); use modules (nn.ReLU, ...) "
            f"for the non-linearities")


__all__: List[str] = [
    "Rescale", "RescaleMaxPool", "RevealCancel", "RevealCancelMaxPool", "SignedLinear",
    "SignedBatchNorm", "DeepLiftState", "DeepLiftAuditor", "ELEMENTWISE", "MAX_POOLING",
    "RULES", "rules_for",
]
