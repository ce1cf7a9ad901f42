"""Rules for functional operations: activations, gates, products, softmax, norms.

Module rules see a module's input and output.  Operations called as functions in a
``forward`` (``torch.sigmoid(x)``, ``x * gate``, ``F.gelu``, ``q @ k.transpose(-1,
-2)``, ``F.layer_norm``, ``x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))``) are
intercepted inside the scope of an explanation (:mod:`lrp.scope`) and replaced by a
modified forward exactly like a module's output.  Operations are grouped in *kinds*
(:data:`KINDS`); a composite maps kinds (or single functions) to op rules with
:class:`lrp.composites.OpMap`, optionally only inside some modules' forwards.

Op rules, in ratio form (the gradient ``g`` arriving at the output is the relevance
per unit of output, ``R = z * g``):

* :class:`Identity` -- element-wise ``y = f(x)``: ``R_x = R_y``, i.e. the ratio
  ``f(x) / x`` is passed back (the identity rule of LRP for sigmoid, tanh, GELU,
  SiLU, ...).
* :class:`Uniform` -- a product or matrix product of ``k`` operands that all depend on
  the input: each receives ``1/k`` of the relevance (the uniform rule of AttnLRP,
  Achtibat et al. 2024); since ``a * b`` is linear in each operand, that is the
  gradient divided by ``k`` on each side.
* :class:`Gate` -- a product ``x * gate`` where the gate is broadcast over ``x`` (a
  squeeze-excitation scale): the gate is a constant, all relevance goes to ``x``.
* :class:`Gradient` -- the operation's own gradient is the rule.  For softmax this is
  the AttnLRP rule (Prop. 3.1: ``R_x = x (R_y - s sum(R_y))``, whose ratio at ``x`` is
  exactly the softmax gradient).
* :class:`Constant` -- the output is a constant: no relevance flows through it
  (CP-LRP's attention weights, Ali et al. 2022; statistics of normalizations).
* :class:`Normalizer` -- ``F.layer_norm``, ``F.group_norm``, ``F.rms_norm``,
  ``F.instance_norm``: the normalizing statistic is a constant, so the operation is
  linear in its input and relevance passes by LRP-0 (the bias absorbs its share).
* :class:`Guided` -- guided backpropagation on a functional ReLU.

Operations of no listed kind run unchanged; the coverage audit reports the
non-linear ones.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .core import Gradient as _Gradient
from .core import Term, rule_output

_T = torch.Tensor


def _functions(*names: str, where: Iterable[Any] = (torch, F, _T, torch.special)) -> List[Callable]:
    found: List[Callable] = []
    for name in names:
        for namespace in where:
            fn = getattr(namespace, name, None)
            if fn is not None and fn not in found:
                found.append(fn)
    return found


#: Element-wise activations: ``y = f(x)``, applied to the first argument.
ACTIVATIONS = _functions(
    "sigmoid", "tanh", "gelu", "silu", "mish", "softplus", "elu", "selu", "celu",
    "hardswish", "hardsigmoid", "hardtanh", "relu6", "logsigmoid", "softsign",
    "tanhshrink", "sigmoid_", "tanh_", "elu_", "selu_", "celu_", "hardtanh_", "expit")
#: ReLU-like operations (their gradient is already the LRP rule; DeepLift and guided
#: backprop need their own).
RELUS = _functions("relu", "relu_", "leaky_relu", "leaky_relu_", "threshold", "threshold_")
SOFTMAX = _functions("softmax", "_softmax")
PRODUCTS = [torch.mul, _T.mul, _T.mul_, _T.__mul__, _T.__rmul__, _T.__imul__, torch.multiply]
MATMULS = [torch.matmul, _T.matmul, _T.__matmul__, _T.__rmatmul__, torch.bmm, _T.bmm,
           torch.mm, _T.mm, torch.einsum, torch.baddbmm, _T.baddbmm]
NORMALIZATIONS = [F.layer_norm, F.group_norm, F.instance_norm] + _functions(
    "rms_norm", where=(F,))
STATISTICS = _functions("rsqrt", "sqrt", "var", "std", "var_mean", "std_mean", "norm",
                        "rsqrt_", "sqrt_") + [torch.linalg.vector_norm, torch.linalg.norm]
MAX_POOLS = [F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
             F.adaptive_max_pool2d, F.adaptive_max_pool3d]
ATTENTION = [F.scaled_dot_product_attention, F.multi_head_attention_forward]

#: Element-wise activation modules (they get the identity rule in the presets).
ACTIVATION_MODULES = (nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Softplus, nn.ELU, nn.LeakyReLU,
                      nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.CELU, nn.SELU, nn.Hardtanh)


def is_activation_module(module: nn.Module) -> bool:
    """Whether ``module`` is an element-wise activation: a torch activation module
    or one of Hugging Face's activation classes (``transformers.activations``:
    ``NewGELUActivation``, ``SiLUActivation``, ... -- matched by module path, so
    ``transformers`` is never imported here)."""
    return isinstance(module, ACTIVATION_MODULES) or (
        type(module).__module__ == "transformers.activations"
        and type(module).__name__ != "LinearActivation")


_ACTIVATION_MARK = "lrp_activation"


def mark_activation(t: Tensor) -> Tensor:
    """Note on ``t``'s autograd node that it is an activation's output (gates)."""
    if isinstance(t, Tensor) and t.grad_fn is not None:
        t.grad_fn.metadata[_ACTIVATION_MARK] = True
    return t


def is_activation_output(t: Tensor) -> bool:
    """Whether ``t`` was produced by an element-wise activation (see :func:`mark_activation`)."""
    return isinstance(t, Tensor) and t.grad_fn is not None and bool(
        t.grad_fn.metadata.get(_ACTIVATION_MARK))

#: Kind of every intercepted function.
KINDS: Dict[Callable, str] = {}
for _kind, _fns in (("activation", ACTIVATIONS), ("relu", RELUS), ("softmax", SOFTMAX),
                    ("product", PRODUCTS), ("matmul", MATMULS),
                    ("normalization", NORMALIZATIONS), ("statistic", STATISTICS),
                    ("maxpool", MAX_POOLS), ("attention", ATTENTION)):
    for _fn in _fns:
        KINDS.setdefault(_fn, _kind)

_INPLACE_METHODS = {_T.mul_: _T.mul, _T.__imul__: _T.mul, _T.sigmoid_: _T.sigmoid,
                    _T.tanh_: _T.tanh, _T.relu_: _T.relu}


def kind_of(func: Callable) -> Optional[str]:
    """The kind of an intercepted function (``None``: not intercepted)."""
    return KINDS.get(func)


def _out_of_place(func: Callable, args: tuple, kwargs: dict) -> Tuple[Callable, dict, bool]:
    """``func`` and ``kwargs`` without in-place semantics; whether they had them."""
    if func in _INPLACE_METHODS:
        return _INPLACE_METHODS[func], kwargs, True
    name = getattr(func, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):
        plain = getattr(torch, name[:-1], None) or getattr(F, name[:-1], None)
        if plain is not None:
            return plain, kwargs, True
    if kwargs.get("inplace") is True:
        return func, {**kwargs, "inplace": False}, True
    return func, kwargs, False


def _in_place_result(target: Tensor, result: Tensor) -> Tensor:
    """Write ``result`` into ``target`` (the caller asked for an in-place operation)."""
    with torch._C.DisableTorchFunction():
        target.copy_(result)
    return target


class _ScaleGradient(torch.autograd.Function):
    """Identity forward (a view); gradient multiplied by ``factor``."""

    @staticmethod
    def forward(ctx, x, factor):  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad * ctx.factor, None

    @staticmethod
    def vmap(info, in_dims, x, factor):  # type: ignore[override]
        return x.view_as(x), in_dims[0]


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` whose gradient is multiplied by ``factor`` in the backward pass."""
    return _ScaleGradient.apply(x, factor)


def surrogate(value: Tensor, modified: Tensor, recorder=None) -> Tensor:
    """A tensor equal to ``value`` whose gradient flows into ``modified`` unchanged
    (``modified`` must equal ``value`` up to rounding; ``recorder`` as for
    :func:`lrp.core.rule_output`)."""
    return rule_output(value, [Term(modified)], 0.0, recorder, gradient=_PASS)


class _PassGradient(_Gradient):
    """Gradient of :func:`surrogate`: the incoming gradient, unchanged."""

    vmap_safe = True

    def forward(self, z, outputs):
        return ()

    def backward(self, grad, saved, rectified):
        return [grad]


_PASS = _PassGradient()


def carries(t: Any) -> bool:
    """Whether ``t`` depends on the explained input (inside a scope parameters are
    detached, so that is ``requires_grad``)."""
    return isinstance(t, Tensor) and t.requires_grad


class OpRule:
    """Base class of op rules: :meth:`apply` returns the operation's output, with the
    value of ``func(*args, **kwargs)`` and the rule as its gradient."""

    _fields: Sequence[str] = ()
    #: Whether the scope detaches parameters among the arguments first (rules that
    #: decompose an operation into others see them as they are).
    constant_parameters = True

    def apply(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"


class Gradient(OpRule):
    """The operation's own gradient (for softmax: the AttnLRP rule)."""

    def apply(self, func, args, kwargs):
        return func(*args, **kwargs)


class Constant(OpRule):
    """The output is a constant: no relevance flows back through the operation."""

    def apply(self, func, args, kwargs):
        func, kwargs, inplace = _out_of_place(func, args, kwargs)
        out = func(*args, **kwargs)
        if isinstance(out, tuple):  # var_mean, std_mean
            return tuple(o.detach() if isinstance(o, Tensor) else o for o in out)
        out = out.detach()
        return _in_place_result(args[0], out) if inplace else out


def _gelu_ratio(approximate: str) -> Optional[Callable[[Tensor], Tensor]]:
    return torch.special.ndtr if approximate == "none" else None


def identity_ratio(fn: Any, args: tuple = (), kwargs: Optional[dict] = None
                   ) -> Optional[Callable[[Tensor], Tensor]]:
    """``x -> f(x) / x`` in closed form for the activation ``fn`` (a function called
    with ``args`` and ``kwargs``, or a module), or ``None`` when there is none cheaper than the
    division: SiLU's is ``sigmoid(x)``, exact GELU's the normal CDF ``Phi(x)`` (also
    for Hugging Face's ``SiLUActivation`` and ``GELUActivation``).  One
    kernel instead of four, and the true limit at ``x = 0``."""
    if fn is F.silu or isinstance(fn, nn.SiLU):
        return torch.sigmoid
    if fn is F.gelu:
        return _gelu_ratio(args[1] if len(args) > 1 else (kwargs or {}).get("approximate", "none"))
    if isinstance(fn, nn.GELU):
        return _gelu_ratio(fn.approximate)
    if isinstance(fn, nn.Module) and type(fn).__module__ == "transformers.activations":
        # Hugging Face's classes of F.silu and exact GELU (matched by name: transformers
        # is not imported here)
        return {"SiLUActivation": torch.sigmoid,
                "GELUActivation": torch.special.ndtr}.get(type(fn).__name__)
    return None


class _RatioGradient(_Gradient):
    """Gradient of the identity rule from a closed form of the ratio ``f(x) / x``.

    ``lazy``: the input is saved and the ratio computed in the backward pass (as
    autograd's own SiLU and GELU do): no work in the forward, and none at all when no
    relevance reaches the activation (a gate, constant under CP-LRP).  Otherwise (the
    input is overwritten, an in-place activation) the ratio is saved."""

    vmap_safe = True

    def __init__(self, ratio: Callable[[Tensor], Tensor], lazy: bool = True):
        self.ratio = ratio
        self.lazy = lazy

    def forward(self, z, outputs):
        return (outputs[0] if self.lazy else self.ratio(outputs[0]),)

    def backward(self, grad, saved, rectified):
        return [(self.ratio(saved[0]) if self.lazy else saved[0]) * grad]


def identity_output(x: Tensor, out: Tensor, epsilon: float, recorder=None,
                    ratio: Optional[Callable[[Tensor], Tensor]] = None,
                    overwritten: bool = False) -> Tensor:
    """``out = f(x)`` (element-wise) with the identity rule ``R_x = R_out`` as its
    gradient: the ratio ``f(x) / x`` is passed back, computed by ``ratio`` (see
    :func:`identity_ratio`; in the backward pass, from the saved ``x``, unless
    ``overwritten``: ``x`` is overwritten later, an in-place activation) or as
    ``out / stab(x)`` with the stabilizer ``epsilon``."""
    return rule_output(out, [Term(x)], epsilon, recorder,
                       None if ratio is None else _RatioGradient(ratio, lazy=not overwritten))


class Identity(OpRule):
    """Element-wise ``y = f(x)``: relevance passes unchanged, ``R_x = R_y`` (ratio
    ``f(x) / x``, stabilized by ``epsilon`` where ``x`` is zero, or in closed form
    where it has one, see :func:`identity_ratio`)."""

    _fields = ("epsilon",)

    def __init__(self, epsilon: float = 1e-12):
        self.epsilon = float(epsilon)

    def apply(self, func, args, kwargs):
        ratio = identity_ratio(func, args, kwargs)
        return _elementwise(func, args, kwargs, lambda x, out, inplace: mark_activation(
            identity_output(x, out, self.epsilon, ratio=ratio, overwritten=inplace)))


def _elementwise(func: Callable, args: tuple, kwargs: dict,
                 modify: Callable[[Tensor, Tensor, bool], Tensor]) -> Tensor:
    """``func(x, ...)`` (out of place), with ``modify(x, out, inplace)`` giving the
    result when ``x`` carries relevance; written back into ``x`` when ``func`` was in
    place (``inplace``)."""
    x = args[0]
    func, kwargs, inplace = _out_of_place(func, args, kwargs)
    out = func(*args, **kwargs)
    result = modify(x, out, inplace) if carries(x) else out
    return _in_place_result(x, result) if inplace else result


def _operands(func: Callable, args: tuple) -> Tuple[List[int], bool]:
    """Positions of the tensor operands of a product/matmul in ``args`` (einsum: the
    operands after the equation, possibly as one list) and whether they are in a list."""
    if func is torch.einsum:
        if len(args) == 2 and isinstance(args[1], (list, tuple)):
            return list(range(len(args[1]))), True
        return list(range(1, len(args))), False
    if func in (torch.baddbmm, _T.baddbmm):
        return [1, 2], False
    return [0, 1], False


def _carrying(func, args: tuple) -> List[int]:
    positions, listed = _operands(func, args)
    ops = args[1] if listed else args
    return [i for i in positions if i < len(ops) and carries(ops[i])]


class Uniform(OpRule):
    """A product / matrix product of ``k`` input-dependent operands: each receives
    ``1/k`` of the relevance (AttnLRP's uniform rule).  With one input-dependent
    operand the operation is linear and keeps its gradient."""

    def apply(self, func, args, kwargs):
        carrying = _carrying(func, args)
        func, kwargs, inplace = _out_of_place(func, args, kwargs)
        out = func(*args, **kwargs)
        if len(carrying) > 1:
            # the operation is linear in each operand, so dividing the output's gradient
            # by k gives each operand 1/k: one multiplication instead of k
            out = scale_gradient(out, 1.0 / len(carrying))
        return _in_place_result(args[0], out) if inplace else out


class Gate(OpRule):
    """A gate ``x * g``: the gate ``g`` is a constant and all relevance goes to ``x``.

    The gate is the operand an element-wise activation produced (SwiGLU's
    ``silu(gate_proj(x))``, a squeeze-excitation's ``sigmoid(...)``) when exactly one
    operand is such an output, else the operand broadcast over the other (a
    squeeze-excitation scale ``(N, C, 1, 1)``); products with neither use
    :class:`Uniform`.
    """

    def apply(self, func, args, kwargs):
        carrying = _carrying(func, args)
        if len(carrying) < 2 or func not in PRODUCTS:
            return Uniform().apply(func, args, kwargs)
        a, b = args[0], args[1]
        marked = [i for i in (0, 1) if is_activation_output(args[i])]
        if len(marked) == 1:
            gate = marked[0]
        elif a.numel() != b.numel():
            gate = 1 if b.numel() < a.numel() else 0
        else:
            return Uniform().apply(func, args, kwargs)
        func, kwargs, inplace = _out_of_place(func, args, kwargs)
        new = list(args)
        new[gate] = new[gate].detach()
        out = func(*new, **kwargs)
        return _in_place_result(args[0], out) if inplace else out


def _norm_dims(x: Tensor, count: int) -> Tuple[int, ...]:
    return tuple(range(x.dim() - count, x.dim()))


def _constant_std_layer_norm(x: Tensor, shape, weight, bias, eps) -> Tensor:
    dims = _norm_dims(x, len(shape))
    centered = x - x.mean(dim=dims, keepdim=True)
    std = torch.sqrt(x.detach().var(dim=dims, unbiased=False, keepdim=True) + eps)
    out = centered / std
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def _constant_std_group_norm(x: Tensor, groups: int, weight, bias, eps) -> Tensor:
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    centered = grouped - grouped.mean(dim=-1, keepdim=True)
    std = torch.sqrt(grouped.detach().var(dim=-1, unbiased=False, keepdim=True) + eps)
    out = (centered / std).reshape(x.shape)
    affine = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(affine)
    if bias is not None:
        out = out + bias.reshape(affine)
    return out


def _constant_rms_norm(x: Tensor, shape, weight, eps) -> Tensor:
    dims = _norm_dims(x, len(shape))
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    rms = torch.rsqrt(x.detach().pow(2).mean(dim=dims, keepdim=True) + eps)
    out = x * rms
    return out * weight if weight is not None else out


def _bind(func: Callable, args: tuple, kwargs: dict, names: Sequence[str],
          defaults: Sequence[Any]) -> List[Any]:
    """Arguments by position (parameters detached: they are constants)."""
    values = list(args[:len(names)]) + list(defaults[len(args):])
    for i, name in enumerate(names):
        if name in kwargs:
            values[i] = kwargs[name]
    return [v.detach() if isinstance(v, nn.Parameter) else v for v in values]


class Normalizer(OpRule):
    """A normalization whose statistic is a constant: ``F.layer_norm``,
    ``F.group_norm``, ``F.rms_norm`` and ``F.instance_norm`` become linear in their
    input (centring, division by the constant standard deviation or RMS, the affine
    map), and relevance passes by LRP-0; the bias absorbs its share (Ali et al. 2022).
    """

    def apply(self, func, args, kwargs):
        x = args[0]
        out = func(*args, **kwargs)
        if not carries(x):
            return out
        if func is F.layer_norm:
            _, shape, w, b, eps = _bind(func, args, kwargs, ("input", "normalized_shape",
                                        "weight", "bias", "eps"), (None, None, None, None, 1e-5))
            modified = _constant_std_layer_norm(x, shape, w, b, eps)
        elif func is F.group_norm:
            _, g, w, b, eps = _bind(func, args, kwargs, ("input", "num_groups", "weight",
                                    "bias", "eps"), (None, None, None, None, 1e-5))
            modified = _constant_std_group_norm(x, g, w, b, eps)
        elif func is F.instance_norm:
            names = ("input", "running_mean", "running_var", "weight", "bias",
                     "use_input_stats", "momentum", "eps")
            values = _bind(func, args, kwargs, names, (None, None, None, None, None, True,
                                                       0.1, 1e-5))
            if not values[5]:
                return out  # running statistics: an affine map, already linear
            modified = _constant_std_group_norm(x, x.shape[1], values[3], values[4], values[7])
        else:  # rms_norm
            _, shape, w, eps = _bind(func, args, kwargs, ("input", "normalized_shape",
                                     "weight", "eps"), (None, None, None, None))
            modified = _constant_rms_norm(x, shape, w, eps)
        return surrogate(out, modified)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):  # type: ignore[override]
        ctx.save_for_backward(x)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0).to(grad.dtype), None


class Guided(OpRule):
    """Guided backpropagation on a functional ReLU: only positive gradients pass,
    where the input is positive."""

    def apply(self, func, args, kwargs):
        return _elementwise(func, args, kwargs, lambda x, out, _: _GuidedReLU.apply(x, out.detach()))


class Attention(OpRule):
    """Attention kernels (``F.scaled_dot_product_attention``, the functional form of
    ``nn.MultiheadAttention``) as the composition they compute,
    ``softmax(q k^T * scale + mask) v``, with the given rules for its matrix products
    and its softmax.

    With :class:`Uniform` products and the softmax's :class:`Gradient` (AttnLRP) the
    rule is the kernel's own gradient with the gradients of ``q`` and ``k`` divided by
    4 and that of ``v`` by 2 (each product halves its operands' shares); with a
    :class:`Constant` softmax (CP-LRP) ``q`` and ``k`` carry no relevance.  So the
    fused kernel runs unchanged: the same value and speed.  ``nn.MultiheadAttention``
    is computed from its parts: the input projection, this rule, and the output
    projection through the ``out_proj`` module's own rule.

    Parameters
    ----------
    softmax
        :class:`Gradient` (AttnLRP) or :class:`Constant` (CP-LRP).
    matmul
        :class:`Uniform` (or :class:`Gradient`: products keep their full gradient).
    """

    _fields = ("softmax", "matmul")
    constant_parameters = False

    def __init__(self, softmax: OpRule, matmul: OpRule):
        if not isinstance(softmax, (Gradient, Constant)) or not isinstance(matmul, (Uniform, Gradient)):
            raise TypeError("Attention takes softmax=Gradient() or Constant() and "
                            "matmul=Uniform() or Gradient()")
        self.softmax = softmax
        self.matmul = matmul

    def _scaled(self, q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        constant = isinstance(self.softmax, Constant)
        uniform = isinstance(self.matmul, Uniform)
        weights_carry = not constant and (carries(q) or carries(k))
        n_av = int(weights_carry) + int(carries(v))  # relevance-carrying operands of A v
        av = 1.0 / n_av if uniform and n_av > 1 else 1.0
        n_qk = int(carries(q)) + int(carries(k))  # ... and of q k^T
        qk = 1.0 / n_qk if uniform and n_qk > 1 else 1.0
        if constant:
            q, k = q.detach(), k.detach()
        elif weights_carry:
            q = scale_gradient(q, qk * av) if carries(q) else q
            k = scale_gradient(k, qk * av) if carries(k) else k
        if carries(v) and av != 1.0:
            v = scale_gradient(v, av)
        return q, k, v

    def apply(self, func, args, kwargs):
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            q, k, v = self._scaled(q, k, v)
            return func(q, k, v, *args[3:], **kwargs)
        return _multi_head_attention(self, *args, **kwargs)


def _multi_head_attention(rule: Attention, query, key, value, embed_dim_to_check, num_heads,
                          in_proj_weight, in_proj_bias, bias_k, bias_v, add_zero_attn,
                          dropout_p, out_proj_weight, out_proj_bias, training=True,
                          key_padding_mask=None, need_weights=True, attn_mask=None,
                          use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None,
                          v_proj_weight=None, static_k=None, static_v=None,
                          average_attn_weights=True, is_causal=False):
    """``F.multi_head_attention_forward`` (inputs ``(L, N, E)``) from its parts: input
    projections, :class:`Attention`'s rule on the attention, and the output
    projection as a functional call of the ``out_proj`` weight (which gets the
    ``out_proj`` module's rule in the scope).  Exotic options (``bias_k``,
    ``add_zero_attn``, static keys, dropout in training) run the original function."""
    from .scope import dispatch
    original = (bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None
                or static_v is not None or (training and dropout_p > 0))
    if original:
        return F.multi_head_attention_forward(
            query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias,
            bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training,
            key_padding_mask, need_weights, attn_mask, use_separate_proj_weight, q_proj_weight,
            k_proj_weight, v_proj_weight, static_k, static_v, average_attn_weights, is_causal)
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed = query.shape
    src_len = key.shape[0]
    head = embed // num_heads
    detach = lambda p: None if p is None else p.detach()  # noqa: E731 - parameters are constants
    if use_separate_proj_weight:
        weights = [detach(q_proj_weight), detach(k_proj_weight), detach(v_proj_weight)]
    else:
        weights = list(detach(in_proj_weight).chunk(3))
    biases = list(detach(in_proj_bias).chunk(3)) if in_proj_bias is not None else [None] * 3
    q = F.linear(query, weights[0], biases[0])
    k = F.linear(key, weights[1], biases[1])
    v = F.linear(value, weights[2], biases[2])

    def heads(x: Tensor, length: int) -> Tensor:  # (L, N, E) -> (N, H, L, D)
        return x.reshape(length, bsz, num_heads, head).permute(1, 2, 0, 3)

    q, k, v = heads(q, tgt_len), heads(k, src_len), heads(v, src_len)
    mask = _merged_mask(attn_mask, key_padding_mask, bsz, num_heads, tgt_len, src_len, q.dtype)
    causal = is_causal and mask is None
    weights_out = None
    if need_weights:
        with torch.no_grad():
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(head)
            if mask is not None:
                scores = scores + mask
            elif causal:
                scores = scores.masked_fill(torch.ones(tgt_len, src_len, dtype=torch.bool,
                                                       device=q.device).triu(1), float("-inf"))
            weights_out = torch.softmax(scores, dim=-1)
            if average_attn_weights:
                weights_out = weights_out.mean(dim=1)
            if not batched:
                weights_out = weights_out.squeeze(0)
    q, k, v = rule._scaled(q, k, v)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    attn = attn.permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed)
    out = dispatch(F.linear, attn, out_proj_weight, out_proj_bias)
    if not batched:
        out = out.squeeze(1)
    return out, weights_out


def _merged_mask(attn_mask, key_padding_mask, bsz, num_heads, tgt_len, src_len, dtype):
    """MultiheadAttention's masks (True or -inf: not attended) as one additive float mask
    of shape ``(N, H, L, S)`` for ``F.scaled_dot_product_attention`` (``None``: no mask)."""
    def additive(m: Tensor) -> Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        m = additive(attn_mask)
        mask = m.view(bsz, num_heads, tgt_len, src_len) if m.dim() == 3 else m.view(1, 1, tgt_len, src_len)
    if key_padding_mask is not None:
        kpm = additive(key_padding_mask).view(bsz, 1, 1, src_len)
        mask = kpm if mask is None else mask + kpm
    return mask


_NORMALIZER = Normalizer()
_CONSTANT = Constant()


class _ConstantStatistics(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = KINDS.get(func)
        if kind == "normalization":
            return _NORMALIZER.apply(func, args, kwargs or {})
        if kind == "statistic":
            return _CONSTANT.apply(func, args, kwargs or {})
        return func(*args, **(kwargs or {}))


def constant_statistics() -> TorchFunctionMode:
    """A context in which normalizations (``F.layer_norm``, ``F.group_norm``,
    ``F.rms_norm``, ``F.instance_norm``) and statistics (``rsqrt``, ``sqrt``, ``var``,
    ``std``, norms) are computed with their statistic held constant in the gradient."""
    return _ConstantStatistics()


Within = Union[None, str, type, Tuple[Union[str, type], ...]]


class OpTable:
    """The op rules of a scope: ``(kind or function) -> rule`` maps, each optionally
    restricted to the forwards of some modules, later entries overriding earlier.

    Parameters
    ----------
    entries
        ``(mapping, within, names)`` triples: ``mapping`` from kinds (see
        :data:`KINDS`) or functions to op rules; ``within`` module classes or
        qualified names (``None``: everywhere) whose forward -- at any depth -- the
        mapping applies to; ``names`` the model's ``module -> name`` map.
    """

    def __init__(self, entries: Sequence[Tuple[Dict[Any, OpRule], Within]],
                 names: Dict[nn.Module, str]):
        self.entries = list(entries)
        self.names = names
        self._cache: Dict[Tuple[Any, int], Optional[OpRule]] = {}
        kinds = {key for mapping, _ in self.entries for key in mapping if isinstance(key, str)}
        #: Every function some entry may give a rule to (others need no lookup).
        self.functions = {fn for fn, kind in KINDS.items() if kind in kinds} | {
            key for mapping, _ in self.entries for key in mapping if not isinstance(key, str)}

    def __bool__(self) -> bool:
        return bool(self.entries)

    def _matches(self, within: Within, stack: Sequence[nn.Module]) -> bool:
        if within is None:
            return True
        items = within if isinstance(within, tuple) else (within,)
        for module in stack:
            for item in items:
                if isinstance(item, str):
                    if self.names.get(module) == item:
                        return True
                elif isinstance(module, item):
                    return True
        return False

    def rule(self, func: Callable, module: Optional[nn.Module],
             stack: Sequence[nn.Module]) -> Optional[OpRule]:
        """The op rule of ``func`` called in ``module``'s forward (``stack``: the
        modules being called, outermost first), or ``None``."""
        key = (func, id(module))
        try:
            return self._cache[key]
        except KeyError:
            pass
        kind = KINDS.get(func)
        found = None
        for mapping, within in reversed(self.entries):
            rule = mapping.get(func, mapping.get(kind) if kind is not None else None)
            if rule is not None and self._matches(within, stack):
                found = rule
                break
        self._cache[key] = found
        return found


__all__ = [
    "OpRule", "Identity", "Uniform", "Gate", "Gradient", "Constant", "Normalizer",
    "Guided", "Attention", "OpTable", "KINDS", "kind_of", "scale_gradient", "surrogate",
    "carries", "identity_ratio", "identity_output", "ACTIVATION_MODULES",
    "is_activation_module", "mark_activation", "is_activation_output",
]
