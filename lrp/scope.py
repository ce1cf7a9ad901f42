"""Rules bound to the explained call: the scope of one ``explain`` or ``attached`` block.

Nothing is attached to the user's model.  A :class:`Scope` holds everything one
explanation needs -- the rule of each module, the parameters canonizers substitute,
the rules of functional operations, observers -- and is made active in a
:mod:`contextvars` context.  Two process-wide module hooks (installed while any scope
is active, see :func:`torch.nn.modules.module.register_module_forward_hook`) and a
:class:`torch.overrides.TorchFunctionMode` entered for the duration of a member
module's forward consult the active scope:

* a module called in a context where no scope owns it runs exactly as without
  ``lrp`` (other threads, other models, code outside the block);
* inside the scope, a ruled module's output is replaced by its rule's modified
  forward (:mod:`lrp.core`), a canonized layer computes with the substituted
  parameters, and functional operations (``torch.sigmoid``, ``x * gate``, softmax,
  ``F.layer_norm``, ...) get the op rules of the scope (:mod:`lrp.ops`);
* parameters are constants inside the scope: every operation sees them detached, so
  gradients flow to the inputs only and "depends on the input" is simply
  ``requires_grad``.

Scopes nest: for a module, the innermost active scope whose model contains it wins,
so an ``explain`` inside a user's ``attached()`` block of another composite sees
only its own rules.  A scope applies to the forwards run in the context (thread) that
entered it, and in contexts copied from it (``contextvars.copy_context().run``,
asyncio tasks); a plain new thread starts with no scope.
"""
from __future__ import annotations

import contextvars
import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module
from torch.overrides import TorchFunctionMode

from .core import RuleCall
from .core import active_trace as _active_trace
from .ops import is_activation_module, mark_activation

#: ``observer(module, args, output) -> replacement or None``, called after the rule.
Observer = Callable[[nn.Module, tuple, Any], Any]
#: ``op_observer(func, args, kwargs, module)``, called for every operation (probes).
OpObserver = Callable[[Callable, tuple, dict, Optional[nn.Module]], None]

_ACTIVE: contextvars.ContextVar[Tuple["Scope", ...]] = contextvars.ContextVar(
    "lrp_scopes", default=())

_INSTALL_LOCK = threading.Lock()
_INSTALLED: list = []
_USERS = 0


@dataclass
class Bound:
    """A module rule bound to one module: its name, the rule and its prepared state."""

    name: str
    rule: Any
    prepared: Any


@dataclass
class Substitution:
    """What canonizers change, inside a scope only.

    Attributes
    ----------
    params
        Parameters a layer computes with instead of its own, ``{module: {"weight":
        tensor, "bias": tensor}}`` (detached).
    identity
        Modules whose output is their first input inside the scope (a BatchNorm
        fused into the preceding layer, a stripped final softmax).
    replace
        Modules whose output is computed by ``replace[module](*args)`` instead (its
        own forward still runs first; e.g. a LayerNorm split into two parts).
    virtual
        Modules that exist only inside the scope (the parts of a split LayerNorm),
        by qualified name, so that composites can give them rules.
    merged
        ``(layer, batchnorm)`` name pairs that were fused (for reports).
    """

    params: Dict[nn.Module, Dict[str, Optional[Tensor]]] = field(default_factory=dict)
    identity: Set[nn.Module] = field(default_factory=set)
    replace: Dict[nn.Module, Callable[..., Tensor]] = field(default_factory=dict)
    virtual: Dict[str, nn.Module] = field(default_factory=dict)
    merged: List[Tuple[str, str]] = field(default_factory=list)

    def update(self, other: "Substitution") -> None:
        """Add ``other``'s changes (later canonizers win on conflicts)."""
        self.params.update(other.params)
        self.identity |= other.identity
        self.replace.update(other.replace)
        self.virtual.update(other.virtual)
        self.merged += [m for m in other.merged if m not in self.merged]


class _Frame(threading.local):
    """Per-thread state of a scope: the stack of member modules being called."""

    def __init__(self) -> None:
        self.stack: List[nn.Module] = []
        self.ruled = 0
        self.suspended = False  # while the scope's own rules compute
        self.mode: Optional["_ScopeMode"] = None
        # the rules this forward applies and the ruled layers by weight (see _enter)
        self.rules: Dict[nn.Module, Bound] = {}
        self.owners: Dict[int, nn.Module] = {}
        self.special: Optional[Set[Any]] = None


class Scope:
    """Everything one explanation binds to a model, active in a ``with`` block.

    Parameters
    ----------
    model
        The model (its submodules are the scope's members).
    rules
        Module rules by module.
    substitution
        Canonizer substitutions.
    ops
        The op rules: an object with ``rule(func, module, stack) -> op rule or None``
        (see :class:`lrp.ops.OpTable`); ``None``: functional operations run as they are.
    observers
        Called after each member module's forward (and its rule), in order.
    op_observer
        Called for every functional operation of a member's forward (used by probes).
    """

    def __init__(self, model: nn.Module, rules: Optional[Dict[nn.Module, Bound]] = None,
                 substitution: Optional[Substitution] = None, ops: Any = None,
                 observers: Sequence[Observer] = (), op_observer: Optional[OpObserver] = None):
        self.model = model
        self.rules = dict(rules or {})
        self.substitution = substitution or Substitution()
        self.ops = ops
        self.observers: List[Observer] = list(observers)
        self.op_observer = op_observer
        self.members: Set[int] = {id(m) for m in model.modules()}
        self.members.update(id(m) for m in self.substitution.virtual.values())
        self.on_enter: Optional[Callable[[nn.Module, tuple], None]] = None
        self._frame = _Frame()
        self._token: Optional[contextvars.Token] = None

    # -- activation ---------------------------------------------------------------
    def __enter__(self) -> "Scope":
        _install()
        self._token = _ACTIVE.set(_ACTIVE.get() + (self,))
        return self

    def __exit__(self, *exc) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        _uninstall()

    @property
    def ops(self) -> Any:
        """The op rules (see :class:`lrp.ops.OpTable`), or ``None``."""
        return self._ops

    @ops.setter
    def ops(self, ops: Any) -> None:
        self._ops = ops
        # functions op rules may apply to (None: any function)
        functions = getattr(ops, "functions", None)
        self._op_functions = (None if ops is not None and functions is None
                              else frozenset(functions or ()))

    @property
    def rules(self) -> Dict[nn.Module, Bound]:
        """Module rules by module."""
        return self._rules

    @rules.setter
    def rules(self, rules: Dict[nn.Module, Bound]) -> None:
        self._rules = rules
        # Passive rules (the module's own gradient) change nothing unless their
        # relevance is recorded or the calls are observed: forwards skip them then.
        self._active = {m: b for m, b in rules.items() if not b.rule.passive}
        self._owners_all, self._owners_active = _owners(rules), _owners(self._active)

    def _special_now(self, owners: Dict[int, nn.Module]) -> Optional[Set[Any]]:
        """The functions this forward must look at more closely than detaching their
        parameter arguments (``None``: all): those with op rules, layer functions while
        a layer's weight can be used functionally or parameters are substituted, and
        batch norm while one is fused away."""
        if self._op_functions is None:
            return None
        functions = set(self._op_functions)
        if owners or self.substitution.params:
            functions |= _LAYER_FUNCTIONS
        if self.substitution.identity:
            functions.add(_BATCH_NORM)
        return functions

    def add_member(self, module: nn.Module) -> None:
        """Make ``module`` (not part of the model) subject to this scope."""
        self.members.add(id(module))

    # -- parameters -------------------------------------------------------------------
    def parameters(self, module: nn.Module) -> Dict[str, Optional[Tensor]]:
        """The weight and bias ``module`` computes with inside the scope (detached)."""
        subs = self.substitution.params.get(module)
        if subs is not None:
            return dict(subs)
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        return {"weight": weight.detach() if isinstance(weight, Tensor) else None,
                "bias": bias.detach() if isinstance(bias, Tensor) else None}

    # -- module calls (from the global hooks) -------------------------------------------
    def _enter(self, module: nn.Module, args: tuple) -> None:
        frame = self._frame
        if not frame.stack:
            if self.on_enter is not None:
                self.on_enter(module, args)
            trace = _active_trace()
            everything = bool(self.observers) or (trace is not None and trace.record is not None)
            frame.rules = self._rules if everything else self._active
            frame.owners = self._owners_all if everything else self._owners_active
            frame.special = self._special_now(frame.owners)
            frame.mode = _ScopeMode(self, frame)
            frame.mode.__enter__()
        frame.stack.append(module)
        if module in frame.rules:
            frame.ruled += 1

    def _leave(self, module: nn.Module, args: tuple, kwargs: dict, output):
        frame = self._frame
        if module not in frame.stack:
            return None
        while frame.stack:
            top = frame.stack.pop()
            if top in frame.rules:
                frame.ruled -= 1
            if top is module:
                break
        try:
            if output is not None:
                frame.suspended = True
                try:
                    return self._output(module, args, kwargs, output)
                finally:
                    frame.suspended = False
            return None
        finally:
            if not frame.stack and frame.mode is not None:
                mode, frame.mode = frame.mode, None
                mode.__exit__(None, None, None)

    def _output(self, module: nn.Module, args: tuple, kwargs: dict, output):
        sub = self.substitution
        if not args and kwargs:  # called with keyword arguments only
            args = tuple(v for v in kwargs.values() if isinstance(v, Tensor))[:1]
        replaced = None
        if module in sub.identity and args:
            replaced = output = args[0]
        elif module in sub.replace:
            replaced = output = sub.replace[module](*args)
        bound = self._frame.rules.get(module)
        if bound is not None and torch.is_grad_enabled() and isinstance(output, Tensor):
            replaced = output = bound.rule.apply(module, args, output, bound.prepared,
                                                 _recorder(bound.name))
            _register_call(bound.name, output, args)
            if is_activation_module(module):
                mark_activation(output)
        for observe in self.observers:
            result = observe(module, args, output)
            if result is not None:
                replaced = output = result
        return replaced

    # -- operations (from the torch-function mode) ---------------------------------
    def _operation(self, func, args: tuple, kwargs: dict, frame: _Frame):
        module = frame.stack[-1] if frame.stack else None
        if func is _BATCH_NORM and module in self.substitution.identity:
            return args[0]  # fused into the preceding layer: skip the work
        owner = self._functional_layer(func, args, kwargs, frame)
        rule = (self.ops.rule(func, module, frame.stack)
                if owner is None and self.ops is not None and not frame.ruled else None)
        if rule is None or rule.constant_parameters:
            # (rules that decompose an operation see its parameters, to pass them on)
            args, kwargs = self._constants(func, module, args, kwargs, frame)
        if owner is not None:
            return self._functional_rule(owner, func, args, kwargs)
        if self.op_observer is not None:
            self.op_observer(func, args, kwargs, module)
        if rule is not None:
            out = rule.apply(func, args, kwargs)
            first = next(walk_tensors(out), None)
            if first is not None and first.grad_fn is not None:
                _register_call(f"op:{getattr(func, '__name__', func)}", first, args)
            return out
        return func(*args, **kwargs)

    def _functional_layer(self, func, args: tuple, kwargs: dict, frame: _Frame):
        """The ruled layer whose weight a functional layer call uses outside the layer's
        own forward (``F.linear(x, self.proj.weight, ...)``), or ``None``."""
        if func not in _LAYER_FUNCTIONS or not frame.owners or frame.ruled:
            return None
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        owner = frame.owners.get(id(weight)) if isinstance(weight, nn.Parameter) else None
        if owner is None or owner in frame.stack or not torch.is_grad_enabled():
            return None
        return owner

    def _functional_rule(self, owner: nn.Module, func, args: tuple, kwargs: dict):
        """``owner``'s rule on a functional call of its layer function."""
        out = func(*args, **kwargs)
        bound = self._frame.rules[owner]
        x = args[0]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        if not isinstance(x, Tensor) or not x.requires_grad:
            return out
        params = self.parameters(owner)
        if (bias is None) != (params["bias"] is None):
            return out  # not the layer's own computation: leave it to the gradient
        frame = self._frame
        frame.suspended = True
        try:
            result = bound.rule.apply(owner, (x,), out, bound.prepared, _recorder(bound.name))
        finally:
            frame.suspended = False
        _register_call(bound.name, result, (x,))
        return result

    def _constants(self, func, module, args: tuple, kwargs: dict, frame: _Frame):
        """Parameters as constants (detached), substituted ones for canonized layers,
        and in-place variants made out-of-place inside ruled modules."""
        subs = self.substitution.params.get(module) if module is not None else None
        constant_args, new_kwargs = _constant_arguments(args, kwargs)
        changed = constant_args is not args
        new_args = list(constant_args)
        if subs is not None and func in _LAYER_FUNCTIONS and len(new_args) >= 2:
            # the layer's own call: its (possibly absent) bias is the substituted one
            new_args[1] = subs["weight"]
            if len(new_args) >= 3:
                new_args[2] = subs["bias"]
            else:
                if new_kwargs is kwargs:
                    new_kwargs = dict(kwargs)
                new_kwargs["bias"] = subs["bias"]
            changed = True
        if frame.ruled and frame.stack and frame.stack[-1] in frame.rules:
            position = _inplace_position(func)
            if position is not None:
                if position < len(new_args) and new_args[position] is True:
                    new_args[position] = False
                    changed = True
                elif new_kwargs.get("inplace") is True:
                    new_kwargs = dict(new_kwargs)
                    new_kwargs["inplace"] = False
        return (tuple(new_args) if changed else args), new_kwargs


def _recorder(name: str):
    trace = _active_trace()
    return trace.record(name) if trace is not None and trace.record else None


def _register_call(name: str, output: Tensor, args: tuple) -> None:
    """Tell the active trace that a rule produced ``output`` from ``args`` (the graph
    between them is covered, for the audit)."""
    trace = _active_trace()
    if trace is not None:
        trace.fired += 1
        if trace.audited:
            trace.calls.append(RuleCall(name, output.grad_fn, tuple(
                t.grad_fn for t in walk_tensors(args) if t.grad_fn is not None)))


def _owners(rules: Dict[nn.Module, Bound]) -> Dict[int, nn.Module]:
    """Ruled layers by the id of their weight: a layer used functionally
    (``F.linear(x, layer.weight, layer.bias)``, as attention blocks do with their
    projections) still gets its rule."""
    return {id(m._parameters["weight"]): m for m in rules
            if isinstance(m._parameters.get("weight") if hasattr(m, "_parameters") else None,
                          nn.Parameter)}


_LAYER_FUNCTIONS = {
    torch.nn.functional.linear, torch.nn.functional.conv1d, torch.nn.functional.conv2d,
    torch.nn.functional.conv3d, torch.nn.functional.conv_transpose1d,
    torch.nn.functional.conv_transpose2d, torch.nn.functional.conv_transpose3d,
}

_BATCH_NORM = torch.nn.functional.batch_norm


def _is_parameter(a: Any) -> bool:
    # ``type`` first: isinstance on Parameter goes through a Python-level metaclass check
    return type(a) is nn.Parameter or (isinstance(a, Tensor) and type(a) is not Tensor
                                       and isinstance(a, nn.Parameter))


#: Argument types that are never parameters (checked by type, before anything slower).
_PLAIN = frozenset({Tensor, int, float, bool, type(None), str, tuple, list, slice,
                    torch.dtype, torch.Size, torch.device})


def _constant_arguments(args: tuple, kwargs: Optional[dict]) -> Tuple[tuple, dict]:
    """``args`` and ``kwargs`` with parameters detached (constants inside the scope);
    the very same objects when there are none (the common case, checked cheaply: this
    runs for every operation of the forward)."""
    for a in args:
        if type(a) not in _PLAIN and _is_parameter(a):
            args = tuple(b.detach() if _is_parameter(b) else b for b in args)
            break
    if not kwargs:
        return args, {}
    for v in kwargs.values():
        if type(v) not in _PLAIN and _is_parameter(v):
            return args, {k: w.detach() if _is_parameter(w) else w for k, w in kwargs.items()}
    return args, kwargs


_INPLACE: Dict[Any, Optional[int]] = {}


def _inplace_position(func) -> Optional[int]:
    """Index of the ``inplace`` parameter of ``func`` (``None`` if it has none)."""
    try:
        return _INPLACE[func]
    except KeyError:
        pass
    position = None
    try:
        names = list(inspect.signature(func).parameters)
        position = names.index("inplace") if "inplace" in names else None
    except (TypeError, ValueError):
        position = None
    _INPLACE[func] = position
    return position


#: Functions that never need the scope's attention (shape queries and the like).
_TRIVIAL = {Tensor.dim, Tensor.size, Tensor.numel, Tensor.__len__, Tensor.is_floating_point,
            Tensor.stride, Tensor.is_contiguous, Tensor.__bool__, Tensor.item,
            Tensor.data_ptr, Tensor.__hash__}


class _ScopeMode(TorchFunctionMode):
    """Routes the functional operations of a member module's forward to its scope."""

    def __init__(self, scope: Scope, frame: _Frame):
        super().__init__()
        self.scope = scope
        self.frame = frame

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # Called for every operation of the model's forward: the common case (no rule,
        # substitution or observer concerns it; parameters only need detaching) is
        # decided here.
        frame, scope = self.frame, self.scope
        special = frame.special
        if (special is not None and func not in special and not frame.ruled
                and not frame.suspended and scope.op_observer is None):
            args, kwargs = _constant_arguments(args, kwargs)
            return func(*args, **kwargs)
        kwargs = kwargs or {}
        if (frame.suspended or func in _TRIVIAL
                or getattr(func, "__name__", None) == "__get__"):
            return func(*args, **kwargs)
        return scope._operation(func, args, kwargs, frame)


def current_scope(module: nn.Module) -> Optional[Scope]:
    """The innermost active scope that owns ``module`` in this context, or ``None``."""
    scopes = _ACTIVE.get()
    for scope in reversed(scopes):
        if id(module) in scope.members:
            return scope
    return None


def _pre_hook(module: nn.Module, args: tuple):
    if not _ACTIVE.get():
        return None
    scope = current_scope(module)
    if scope is not None:
        scope._enter(module, args)
    return None


def _post_hook(module: nn.Module, args: tuple, *rest):
    # (kwargs, output) normally; (output,) when torch calls it after a failed forward
    if not _ACTIVE.get():
        return None
    kwargs, output = rest if len(rest) == 2 else ({}, rest[0])
    scope = current_scope(module)
    if scope is None:
        return None
    return scope._leave(module, args, kwargs, output)


def _install() -> None:
    global _USERS
    with _INSTALL_LOCK:
        _USERS += 1
        if not _INSTALLED:
            _INSTALLED.append(_module.register_module_forward_pre_hook(_pre_hook))
            _INSTALLED.append(_module.register_module_forward_hook(
                _post_hook, with_kwargs=True, always_call=True))


def _uninstall() -> None:
    global _USERS
    with _INSTALL_LOCK:
        _USERS -= 1
        if _USERS == 0:
            for handle in _INSTALLED:
                handle.remove()
            _INSTALLED.clear()


def dispatch(func, *args, **kwargs):
    """Run ``func`` as an operation of the innermost active scope (its op rules,
    constant parameters, functional layer rules) -- for op rules that decompose an
    operation into others (attention).  Without an active scope: ``func`` itself."""
    scopes = _ACTIVE.get()
    if not scopes:
        return func(*args, **kwargs)
    scope = scopes[-1]
    return scope._operation(func, args, kwargs, scope._frame)


def current_module() -> Optional[nn.Module]:
    """The innermost module whose forward is running in this thread under the
    innermost active scope (``None`` outside any)."""
    scopes = _ACTIVE.get()
    if not scopes:
        return None
    stack = scopes[-1]._frame.stack
    return stack[-1] if stack else None


def active_scopes() -> Tuple[Scope, ...]:
    """The scopes active in this context, outermost first."""
    return _ACTIVE.get()


def walk_tensors(obj) -> Iterator[Tensor]:
    """The tensors in a (nested) module output: tensors, tuples, lists, dicts and
    dict-like outputs such as Hugging Face's ``ModelOutput``."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from walk_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from walk_tensors(item)
