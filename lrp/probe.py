"""What one forward of a model shows about its structure.

Composites need the *execution order* of a model's layers ("the first layer", ranges
of layers), canonizers need to know which tensor each module consumed and produced
and who else consumed it (a BatchNorm can be fused into the layer before it only if
nothing else reads that layer's output), and gradient methods need to know which
layers read the model input.  :func:`probe` runs one forward of the first sample,
without gradients, with no rule active, and records all of it in a
:class:`ModelGraph`: no tracing (``torch.fx``) and nothing left on the model, so
untraceable models work too.  Results are cached per model, module structure and
input signature.
"""
from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from torch import Tensor, nn

from .scope import Scope, walk_tensors


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module in the probe forward.

    Attributes
    ----------
    name
        The module's qualified name.
    inputs
        Identities of the tensors among its positional arguments.
    output
        Identity of its output tensor (``None`` if it returns no single tensor).
    """

    name: str
    inputs: Tuple[int, ...]
    output: Optional[int]


@dataclass
class ModelGraph:
    """The structure of a model as one forward shows it.

    Attributes
    ----------
    order
        Leaf modules in the order they are first called.
    calls
        Every module call, in the order the calls finished.
    call_counts
        How often each module was called.
    uses
        For each tensor identity, the innermost module (name; ``""`` for the model's
        own forward) of every operation that read it.
    input_fed
        Modules whose positional arguments include the model input.
    """

    order: List[str] = field(default_factory=list)
    calls: List[ModuleCall] = field(default_factory=list)
    call_counts: Dict[str, int] = field(default_factory=dict)
    uses: Dict[int, List[str]] = field(default_factory=dict)
    input_fed: Set[str] = field(default_factory=set)

    def producer(self, tensor: int) -> Optional[ModuleCall]:
        """The call whose output is ``tensor`` (innermost first: a leaf's output
        is also its container's when passed through)."""
        for call in self.calls:
            if call.output == tensor:
                return call
        return None


def first_sample(inputs):
    """The first sample of a batch (tensors sliced, tuples/lists element-wise)."""
    if isinstance(inputs, Tensor):
        return inputs[:1] if inputs.dim() > 0 else inputs
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(first_sample(x) for x in inputs)
    return inputs


def signature(inputs) -> tuple:
    """Sample shape, dtype and device of ``inputs`` (tuples element-wise)."""
    if isinstance(inputs, Tensor):
        return (tuple(inputs.shape[1:]), inputs.dtype, inputs.device.type)
    if isinstance(inputs, (tuple, list)):
        return tuple(signature(x) for x in inputs)
    return (type(inputs),)


def structure(model: nn.Module) -> Tuple[Any, ...]:
    """What a model's call structure depends on: every submodule, its name, and any
    forward patched onto an instance (class forwards are fixed)."""
    return tuple((name, id(module), module.__dict__.get("forward"))
                 for name, module in model.named_modules(remove_duplicate=False))


_CACHE: "weakref.WeakKeyDictionary[nn.Module, Tuple[tuple, ModelGraph]]" = \
    weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def first_sample_kwargs(kwargs: Optional[dict], example_input) -> dict:
    """Keyword arguments for a forward of the first sample: tensors whose first
    dimension is the batch are sliced, others pass unchanged."""
    batch = next(iter(walk_tensors(example_input)), None)
    size = batch.shape[0] if batch is not None and batch.dim() > 0 else None
    return {k: v[:1] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == size else v
            for k, v in (kwargs or {}).items()}


def probe(model: nn.Module, example_input, kwargs: Optional[dict] = None) -> ModelGraph:
    """The :class:`ModelGraph` of ``model`` on the first sample of ``example_input``
    (with the model's keyword arguments ``kwargs``).

    Runs one forward without gradients and without rules (cached per model,
    structure and input signature).
    """
    from .attach import run_model

    key = (structure(model), signature(example_input),
           tuple((k, signature(v) if isinstance(v, Tensor) else repr(v))
                 for k, v in sorted((kwargs or {}).items())))
    with _LOCK:
        hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    names = {m: n for n, m in model.named_modules()}
    sample = first_sample(example_input)
    sample_ids = {id(t) for t in walk_tensors(sample)}
    graph = ModelGraph()
    keep: List[Tensor] = []  # tensors stay alive during the probe: their ids are unique
    uses: Dict[int, List[str]] = defaultdict(list)
    seen: Set[str] = set()

    def observe(module: nn.Module, args: tuple, output) -> None:
        name = names.get(module)
        if name is None:
            return None
        tensors = [a for a in args if isinstance(a, Tensor)]
        keep.extend(tensors)
        out = output if isinstance(output, Tensor) else None
        if out is not None:
            keep.append(out)
        graph.calls.append(ModuleCall(name, tuple(id(a) for a in tensors),
                                      id(out) if out is not None else None))
        graph.call_counts[name] = graph.call_counts.get(name, 0) + 1
        if any(id(a) in sample_ids for a in tensors):
            graph.input_fed.add(name)
        if next(module.children(), None) is None and name not in seen:
            seen.add(name)
            graph.order.append(name)
        return None

    def observe_op(func, args: tuple, kwargs: dict, module: Optional[nn.Module]) -> None:
        where = names.get(module, "") if module is not None else ""
        for value in (*args, *kwargs.values()):
            for t in walk_tensors(value):
                keep.append(t)
                uses[id(t)].append(where)

    with torch.no_grad(), Scope(model, observers=[observe], op_observer=observe_op):
        run_model(model, sample, shown=example_input,
                  kwargs=first_sample_kwargs(kwargs, example_input))
    graph.uses = dict(uses)
    with _LOCK:
        _CACHE[model] = (key, graph)
    return graph


def execution_order(model: nn.Module, example_input, kwargs: Optional[dict] = None) -> List[str]:
    """Names of the leaf modules in the order they are first called (see :func:`probe`)."""
    return list(probe(model, example_input, kwargs).order)
