"""The propagation engine: relevance ratios through ordinary autograd.

The engine propagates the *ratio* ``c = R / a`` (relevance per unit of activation)
backwards with plain autograd; relevance anywhere is ``a * a.grad``.  For every
linear operation the LRP-0 rule in ratio form is the ordinary gradient, so residual
sums, concatenations, reshapes and average pooling need no hooks at all.

A rule replaces a module's output by a tensor whose *value* is the true output ``z``
and whose vector-Jacobian product is the rule:

    grad_in = sum_k coef_k * J_k^T (g * z / stab(z_k))

where ``z_k`` are modified forwards of the module (``g`` is the ratio arriving at the
output).  That is implemented by :class:`_RuleGradient`, a single autograd node.

State belonging to one forward call (model inputs, extra relevance sinks, the calls
of ruled modules for the coverage audit) lives in a :class:`Trace`, activated with a
context variable, never on the modules.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


#: Floating-point types whose rule factors are computed in float32.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def saturate(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, clamped to its finite range (no overflow to infinity)."""
    limit = torch.finfo(dtype).max
    return t.clamp(-limit, limit).to(dtype)


def stabilize(denominator: Tensor, epsilon: float) -> Tensor:
    """Push ``denominator`` away from zero by ``epsilon``, keeping its sign.

    Computes ``d + epsilon * sign(d)`` with ``sign(+0) = +1``, so the result is
    never zero for ``epsilon > 0``.
    """
    return denominator.abs().add_(epsilon).copysign_(denominator)


def ratio(z: Tensor, denominator: Tensor, epsilon: float) -> Tensor:
    """``z / stabilize(denominator, epsilon)`` in one fresh buffer (``x / 0 := 0``).

    Computed in place: on the CPU, allocating large buffers costs more than the
    arithmetic.
    """
    out = stabilize(denominator, epsilon)
    if epsilon > 0:
        return torch.div(z, out, out=out)
    zero = out == 0
    out.masked_fill_(zero, 1.0)
    return torch.div(z, out, out=out).masked_fill_(zero, 0.0)


@dataclass(frozen=True)
class Term:
    """One modified forward ``z_k`` of a rule and how its gradient is weighted.

    Parameters
    ----------
    output
        The modified forward (carries the autograd graph to the module input).
    coefficient
        Weight of this term (``alpha`` / ``-beta`` for the alpha-beta rule).
    mask
        Optional boolean tensor (broadcastable to the output) selecting where this
        term applies.  When the incoming gradient vanishes on the whole mask, the
        term's branch of the graph is not evaluated in the backward pass.
    """

    output: Tensor
    coefficient: float = 1.0
    mask: Optional[Tensor] = None


class Gradient:
    """How a rule turns the incoming ratio into gradients for its terms.

    :meth:`forward` runs in the forward pass, while the true output ``z`` is intact,
    and returns the tensors :meth:`backward` needs (the output itself is not kept:
    later in-place operations may change it).  :meth:`backward` returns one gradient
    per term, ``None`` to skip a term's branch of the graph.

    ``rectified`` is True when every consumer of the output is a ReLU (the incoming
    gradient vanishes wherever ``z <= 0``), False when some consumer is not, and None
    when unknown (see :func:`mark_rectified`).

    ``vmap_safe`` says whether :meth:`backward` also works on a gradient batched by
    ``torch.func.vmap`` (no data-dependent branches, no in-place operations mixing
    the gradient with saved tensors); batched backward passes (concept relevance,
    :mod:`lrp.crp`) run the other gradients once per slice of the batch.
    """

    vmap_safe: bool = False
    #: Whether :meth:`backward` uses ``rectified`` (else the graph is not inspected).
    uses_rectified: bool = False

    def forward(self, z: Tensor, outputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        raise NotImplementedError

    def backward(self, grad: Tensor, saved: Sequence[Tensor],
                 rectified: Optional[bool]) -> List[Optional[Tensor]]:
        raise NotImplementedError


class TermGradient(Gradient):
    """The generic rule gradient: ``coef_k * mask_k * grad * z / stab(z_k)`` per term."""

    vmap_safe = True

    def __init__(self, terms: Sequence[Term], epsilon: float):
        self.specs = [(t.coefficient, t.mask) for t in terms]
        self.epsilon = epsilon

    def forward(self, z, outputs):
        factors = []
        for output, (coefficient, mask) in zip(outputs, self.specs):
            factor = ratio(z, output, self.epsilon)
            if coefficient != 1.0:
                factor.mul_(coefficient)
            if mask is not None:
                factor.masked_fill_(~mask, 0.0)
            factors.append(factor)
        return tuple(factors)

    def backward(self, grad, saved, rectified):
        # Skipping a term whose mask sees no gradient is an optimization; under vmap
        # the check would be data-dependent control flow, so every term is computed.
        batched = is_vmapped(grad)
        return [None if mask is not None and not batched and not (mask & (grad != 0)).any()
                else factor * grad for factor, (_, mask) in zip(saved, self.specs)]


def is_vmapped(tensor: Tensor) -> bool:
    """Whether ``tensor`` is batched by ``torch.func.vmap`` (e.g. a gradient inside
    ``vmap(lambda g: torch.autograd.grad(out, x, g))``)."""
    return torch._C._functorch.is_batchedtensor(tensor)


def _unwrap_vmapped(tensor: Tensor) -> tuple[Tensor, int]:
    """The plain tensor behind a vmapped one (vmap dimension first) and its vmap level."""
    level = torch._C._functorch.maybe_get_level(tensor)
    plain, bdim = torch._C._functorch._unwrap_batched(tensor, level)
    return plain.movedim(bdim, 0), level


def _per_slice(fn: Callable[[Tensor], Sequence[Tensor | None]], grad: Tensor
               ) -> list[Tensor | None]:
    """Run ``fn`` on each slice of a vmapped ``grad`` as a plain tensor and batch the
    results again (``None`` results of some slices become zeros).

    For backward code that is not vmap-safe; ops outside ``fn`` stay batched.
    """
    plain, level = _unwrap_vmapped(grad)
    results = [fn(g) for g in plain.unbind(0)]
    out: list[Tensor | None] = []
    for column in zip(*results):
        ref = next((r for r in column if r is not None), None)
        if ref is None:
            out.append(None)
            continue
        stacked = torch.stack([torch.zeros_like(ref) if r is None else r for r in column])
        out.append(torch._C._functorch._add_batch_dim(stacked, 0, level))
    return out


class _RuleGradient(torch.autograd.Function):
    """Value: the true output ``z`` (passed in ``holder``, so it is returned without a
    copy).  Gradients to the terms: ``gradient.backward``."""

    @staticmethod
    def forward(ctx, holder, gradient, recorder, *terms):  # type: ignore[override]
        z = holder[0]
        ctx.gradient = gradient
        ctx.recorder = recorder
        ctx.low = z.dtype if z.dtype in LOW_PRECISION else None
        if ctx.low is not None:
            # rule factors are ratios of nearly equal numbers: float32, not float16
            saved = gradient.forward(z.float(), [t.float() for t in terms])
        else:
            saved = gradient.forward(z, terms)
        ctx.n_saved = len(saved)
        ctx.save_for_backward(*saved, *([z.clone()] if recorder is not None else []))
        return z

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        saved = ctx.saved_tensors
        batched = is_vmapped(grad)
        if ctx.recorder is not None:
            # under vmap the recorder gets the plain relevance, vmap dimension first
            ctx.recorder(saved[-1] * (_unwrap_vmapped(grad)[0] if batched else grad))
        rectified = getattr(ctx, "rectified", None)
        factors = saved[:ctx.n_saved]
        if ctx.low is not None:
            grad = grad.float()
        if batched and not ctx.gradient.vmap_safe:
            grads = _per_slice(lambda g: ctx.gradient.backward(g, factors, rectified), grad)
        else:
            grads = ctx.gradient.backward(grad, factors, rectified)
        if ctx.low is not None:
            grads = [None if g is None else saturate(g, ctx.low) for g in grads]
        return (None, None, None, *grads)


def rule_output(
    z: Tensor,
    terms: Sequence[Term],
    epsilon: float,
    recorder: Optional[Callable[[Tensor], None]] = None,
    gradient: Optional[Gradient] = None,
) -> Tensor:
    """Combine the true output ``z`` with a rule's modified forwards.

    Returns a tensor equal to ``z`` whose gradient implements the generic LRP rule
    ``R_in = sum_k coef_k a * J_k^T (m_k R_out / stab(z_k))``.

    Parameters
    ----------
    z
        The module's true output (only its value is used; it is returned detached
        from its own graph, sharing its storage).
    terms
        The rule's modified forwards, see :class:`Term`.
    epsilon
        Stabilizer added (with the denominator's sign) to each ``z_k``.
    recorder
        Optional callback receiving the relevance ``z * grad`` at this output during
        the backward pass (layer-wise relevance).
    gradient
        A custom gradient for the terms (default: :class:`TermGradient`).
    """
    if gradient is None:
        gradient = TermGradient(terms, epsilon)
    elif gradient.uses_rectified:
        trace = active_trace()
        if trace is not None:
            trace.rectified = True
    return _RuleGradient.apply([z.detach()], gradient, recorder, *[t.output for t in terms])


class _RelevanceBridge(torch.autograd.Function):
    """Forward: constants ``s_k`` (unchanged).  Backward: ``sum_k s_k grad_k / stab(a)`` to ``a``.

    Connects rules whose input relevance is not of the form ``a * grad`` (Flat,
    WSquare, ZBox: relevance of bound tensors or of a ones-tensor) to the ratio
    engine below an inner layer.
    """

    @staticmethod
    def forward(ctx, a, epsilon, *surrogates):  # type: ignore[override]
        ctx.epsilon = epsilon
        ctx.save_for_backward(a, *surrogates)
        return tuple(s.clone() for s in surrogates)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        a, *surrogates = ctx.saved_tensors
        relevance = sum(s * g for s, g in zip(surrogates, grads) if g is not None)
        if isinstance(relevance, Tensor) and is_vmapped(relevance):
            # ratio() works in place on an unbatched buffer
            (grad_a,) = _per_slice(lambda r: (ratio(r, a, ctx.epsilon),), relevance)
        else:
            grad_a = ratio(relevance, a, ctx.epsilon)
        return (grad_a, None, *([None] * len(surrogates)))


@dataclass
class RuleCall:
    """One call of a ruled module during a traced forward (for the audit)."""

    name: str
    output_node: object
    input_nodes: tuple


@dataclass
class Trace:
    """Per-forward state: model inputs, relevance sinks, ruled calls, recorders.

    A trace is created by :func:`lrp.explain` (or by the user through
    :func:`tracing`) around one forward/backward pair.  Rules consult the active
    trace to know whether their input is a model input (then rules such as Flat and
    ZBox return their relevance exactly through extra leaf tensors) and to register
    their calls.
    """

    inputs: list = field(default_factory=list)
    sinks: list = field(default_factory=list)
    calls: list = field(default_factory=list)
    record: Optional[Callable[[str], Optional[Callable[[Tensor], None]]]] = None
    #: Whether a rule of the forward uses ``rectified`` (see :func:`mark_rectified`).
    rectified: bool = False
    #: Number of rule applications in the forward.
    fired: int = 0
    #: Whether each rule application is kept in ``calls`` (for the coverage audit).
    audited: bool = True

    def is_input(self, tensor: Tensor) -> bool:
        return any(tensor is t for t in self.inputs)

    def add_sink(self, tensor: Tensor, leaves: Sequence[Tensor]) -> None:
        self.sinks.append((tensor, tuple(leaves)))

    def input_relevance(self, tensor: Tensor) -> Tensor:
        """Relevance at the model input ``tensor`` after the backward pass."""
        grad = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
        relevance = tensor.detach() * grad
        for target, leaves in self.sinks:
            if target is tensor:
                for leaf in leaves:
                    if leaf.grad is not None:
                        relevance = relevance + leaf.detach() * leaf.grad
        return relevance

    def reset_grads(self) -> None:
        """Clear gradients of inputs and sinks (between several backward passes)."""
        for t in self.inputs:
            t.grad = None
        for _, leaves in self.sinks:
            for leaf in leaves:
                leaf.grad = None


_ACTIVE_TRACE: contextvars.ContextVar[Optional[Trace]] = contextvars.ContextVar(
    "lrp_active_trace", default=None
)


def active_trace() -> Optional[Trace]:
    """The trace of the current forward, or ``None``."""
    return _ACTIVE_TRACE.get()


class tracing:
    """Context manager activating a :class:`Trace` for the forward inside it."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self._token = None

    def __enter__(self) -> Trace:
        self._token = _ACTIVE_TRACE.set(self.trace)
        return self.trace

    def __exit__(self, *exc) -> None:
        _ACTIVE_TRACE.reset(self._token)


def surrogate_inputs(a: Tensor, surrogates: Sequence[Tensor], epsilon: float = 1e-12) -> tuple:
    """Tensors standing in for ``a`` in a modified forward, whose relevance is ``s * grad``.

    At a model input (inside a :class:`Trace`) the surrogates become leaves whose
    relevance the trace adds to the input's, exactly.  Deeper in the network they are
    bridged to ``a`` so that ``a * a.grad`` equals their relevance (up to the
    stabilizer where ``a`` is zero).
    """
    trace = active_trace()
    if trace is not None and trace.is_input(a):
        leaves = tuple(s.detach().requires_grad_(True) for s in surrogates)
        trace.add_sink(a, leaves)
        return leaves
    if not a.requires_grad:
        return tuple(s.detach() for s in surrogates)
    return _RelevanceBridge.apply(a, epsilon, *[s.detach() for s in surrogates])


_RECTIFIERS = ("ReluBackward", "ThresholdBackward")


def mark_rectified(root) -> None:
    """Flag the rule nodes of a graph whose every consumer is a ReLU.

    Their incoming gradient vanishes wherever the output is not positive, which lets
    sign-dependent rules skip the work for negative outputs.  Called by
    :func:`lrp.explain` once per forward (one walk over the graph).
    """
    consumers: dict = {}
    for node in graph_nodes(root, lambda n: False):
        for child, _ in node.next_functions:
            if child is not None:
                consumers.setdefault(child, []).append(node)
    for node, users in consumers.items():
        if type(node).__name__ == "_RuleGradientBackward":
            node.rectified = all(u.name().startswith(_RECTIFIERS) for u in users)


def graph_nodes(root, stop: Callable[[object], bool]) -> Iterator[object]:
    """Walk the autograd graph from ``root`` depth-first, not entering ``stop`` nodes."""
    seen = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen or stop(node):
            continue
        seen.add(node)
        yield node
        stack.extend(n for n, _ in node.next_functions)
