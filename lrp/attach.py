"""Attaching rules to modules as forward hooks, and finding the execution order."""
from __future__ import annotations

import weakref
from functools import partial
from typing import List, Mapping, Tuple

import torch
from torch import Tensor, nn

from .cache import cached, module_state
from .core import RuleCall, active_trace
from .rules import Rule


class RuleHandle:
    """Removable handle of rules attached by :func:`attach_rules` (idempotent ``remove``)."""

    def __init__(self) -> None:
        self._hooks: list = []
        self._inplace: List[nn.Module] = []

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for module in self._inplace:
            module.inplace = True  # type: ignore[assignment]
        self._inplace.clear()

    def __enter__(self) -> "RuleHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _grad_nodes(args) -> tuple:
    return tuple(a.grad_fn for a in args if isinstance(a, Tensor) and a.grad_fn is not None)


def _make_hook(name: str, rule: Rule, prepared):
    def hook(module: nn.Module, args: tuple, output):
        if not torch.is_grad_enabled() or not isinstance(output, Tensor):
            return None
        trace = active_trace()
        recorder = trace.record(name) if trace is not None and trace.record else None
        out = rule.apply(module, args, output, prepared, recorder)
        if trace is not None:
            trace.calls.append(RuleCall(name, out.grad_fn, _grad_nodes(args)))
        return out
    return hook


def _settings(rule: Rule) -> list:
    return [getattr(rule, f) for f in rule._fields]


def attach_rules(model: nn.Module, mapping: Mapping[str, Rule]) -> RuleHandle:
    """Register the rule of each named module as a forward hook.

    Modified parameters are computed here, once, and reused by later attaches
    while the module's parameters are unchanged (see :mod:`lrp.cache`).  Modules with ``inplace=True``
    (activations) are switched to out-of-place while attached, so that rules see
    their true input; :meth:`RuleHandle.remove` switches them back.
    """
    handle = RuleHandle()
    modules = dict(model.named_modules())
    try:
        for name, rule in mapping.items():
            module = modules[name]
            with torch.no_grad():
                prepared = cached(rule, module, module_state(module, extra=_settings(rule)),
                                  partial(rule.prepare, module))
            if getattr(module, "inplace", False) is True:
                module.inplace = False  # type: ignore[assignment]
                handle._inplace.append(module)
            handle._hooks.append(module.register_forward_hook(_make_hook(name, rule, prepared)))
    except BaseException:
        handle.remove()
        raise
    return handle


def _leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _first_sample(inputs):
    if isinstance(inputs, Tensor):
        return inputs[:1] if inputs.dim() > 0 else inputs
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_first_sample(x) for x in inputs)
    return inputs


def _signature(inputs) -> tuple:
    if isinstance(inputs, Tensor):
        return (tuple(inputs.shape[1:]), inputs.dtype, inputs.device.type)
    if isinstance(inputs, (tuple, list)):
        return tuple(_signature(x) for x in inputs)
    return (type(inputs),)


def run_model(model: nn.Module, inputs):
    """``model(inputs)`` (a tuple is unpacked); a failing forward becomes a ValueError
    naming the input shapes."""
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    try:
        return model(*args)
    except RuntimeError as err:
        tensors = [a for a in args if isinstance(a, Tensor)]
        shapes = [tuple(a.shape) for a in tensors]
        # a first-sample slice x[:1] (execution order, composite resolution) is named by
        # the batch it was cut from, which is what the caller passed
        batches = [a._base if getattr(a, "_base", None) is not None and a.dim() > 0 and a.shape[0] == 1
                   and a._base.shape[1:] == a.shape[1:] and a.data_ptr() == a._base.data_ptr()
                   else a for a in tensors]
        named = [tuple(b.shape) for b in batches]
        what = f"{named[0] if len(named) == 1 else named}"
        if named != shapes:
            what += f" (run on its first sample, {shapes[0] if len(shapes) == 1 else shapes})"
        raise ValueError(f"the model's forward failed on inputs of shape {what}: {err}") from err


def classifier_output(output) -> Tensor:
    """``output`` if it is a ``(batch, classes)`` tensor, else a clear ValueError."""
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise ValueError("the model must return a (batch, classes) tensor, got "
                         f"{getattr(output, 'shape', type(output))}")
    return output


_ORDER_CACHE: "weakref.WeakKeyDictionary[nn.Module, Tuple[tuple, List[str]]]" = \
    weakref.WeakKeyDictionary()


def execution_order(model: nn.Module, example_input) -> List[str]:
    """Names of the leaf modules in the order they are first called.

    Runs one forward on the first sample of ``example_input`` without gradients and
    with no rules attached; the result is cached per model, module structure and
    input signature.
    """
    key = (tuple((n, id(m)) for n, m in model.named_modules()), _signature(example_input))
    hit = _ORDER_CACHE.get(model)
    if hit is not None and hit[0] == key:
        return list(hit[1])
    order: List[str] = []
    seen = set()
    names = {id(m): n for n, m in model.named_modules()}

    def pre_hook(module, args):
        if id(module) not in seen:
            seen.add(id(module))
            order.append(names[id(module)])

    hooks = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if _leaf(m)]
    try:
        with torch.no_grad():
            run_model(model, _first_sample(example_input))
    finally:
        for h in hooks:
            h.remove()
    _ORDER_CACHE[model] = (key, order)
    return list(order)
