"""One shared forward pass, and batched backward passes from a layer.

Conditional relevance for many concepts of one input must not pay one forward and
one backward each.  :func:`capture` runs the forward once with the rules attached
and keeps the outputs of the conditioned and recorded layers.  The ratio ``R / a``
arriving at a layer is computed once per target; masked copies of it, one per
concept, are then propagated from that layer down as a batch by
:meth:`Forward.propagate`: each backward from the layer is a vector-Jacobian
product of the retained graph, run for a whole chunk of concepts at once with
``torch.func.vmap`` over ``torch.autograd.grad`` (or one after the other with
``batch_size=1``, the fastest on large inputs on the CPU, see
``benchmarks/crp_speed.py``).  The graph's rule nodes support vmap
(:mod:`lrp.core`).

Relevance at a layer is ``a * grad`` with ``a`` the layer's output tensor.  The next
operation receives a copy, so in-place operations after the layer (an in-place
ReLU, ``out += identity``) leave the kept tensor and its autograd node intact.
"""
from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attach import classifier_output, run_model
from ..composites import Composite
from ..core import Trace, graph_nodes, tracing
from ..batching import show_progress
from ..explain import _finish_forward, bind
from ..targets import Target, check_inputs, output_seeds, resolve_target

#: ``(count, rows)``: ``rows(lo, hi)`` makes gradients ``lo`` to ``hi`` of ``count``.
Rows = tuple[int, Callable[[int, int], Tensor]]

#: Elements (concepts x samples x input size) per vmapped backward chunk when
#: ``batch_size`` is not given.  Batching pays on small inputs (on the CPU, 64
#: concepts of a 3x32x32 input: 0.44x the time of one backward each); from about
#: 3x224x224 per chunk, batched convolutions are slower than one plain backward per
#: concept (VGG16 at 224: 1.1-1.25x), and the chunk becomes 1.
AUTO_BUDGET = 1 << 18


def check_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The modules called ``names``; a clear :class:`ValueError` for unknown names."""
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layer names must be strings, got {name!r}")
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else (
                f"; its modules are {', '.join([n for n in modules if n][:12])}, ...")
            raise ValueError(f"{type(model).__name__} has no module named {name!r}{hint}")
    return {n: modules[n] for n in names}


@dataclass
class Forward:
    """A forward pass of ``model(x)`` with rules attached and chosen layer outputs kept.

    Created by :func:`capture`; valid inside its ``with`` block.
    """

    x: Tensor
    output: Tensor
    trace: Trace
    composite: Composite
    outputs: dict[str, Tensor]
    activations: dict[str, Tensor]
    order: dict[str, int]
    normalized: bool = False
    _reach: dict[str, set[object]] = field(default_factory=dict)

    # ------------------------------------------------------------------ helpers
    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def shape(self, layer: str) -> tuple[int, ...]:
        """Per-sample output shape of ``layer``."""
        return tuple(self.outputs[layer].shape[1:])

    def leaves(self) -> list[Tensor]:
        """The input and the exact-relevance leaves attached to it (ZBox, Flat)."""
        return [self.x] + [leaf for target, ls in self.trace.sinks if target is self.x
                           for leaf in ls]

    def targets(self, target: Target) -> tuple[Tensor | None, Tensor]:
        """Resolved targets ``(batch,)`` and the gradient seed at the output."""
        t = resolve_target(target, self.output)
        if t is not None and t.dim() != 1:
            raise ValueError("a condition has one target per sample")
        return t, output_seeds(self.output, target, t, self.normalized)[0]

    def grads(self, seed: Tensor, layers: Sequence[str], retain: bool = True) -> list[Tensor]:
        """Gradients (ratios ``R / a``) at the outputs of ``layers`` from the model output."""
        if not layers:
            return []
        out = torch.autograd.grad(self.output, [self.outputs[n] for n in layers], seed,
                                  retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(self.outputs[n]) if g is None else g
                for n, g in zip(layers, out)]

    def relevance(self, layer: str, grad: Tensor) -> Tensor:
        """Relevance ``a * grad`` at ``layer``'s output (``grad`` may carry leading dims)."""
        return self.outputs[layer].detach() * grad

    def reachable(self, start: str | None) -> set[object]:
        """Autograd nodes below ``start`` (``None``: the model output)."""
        key = start or ""
        if key not in self._reach:
            root = (self.outputs[start] if start else self.output).grad_fn
            self._reach[key] = set(graph_nodes(root, lambda n: False))
        return self._reach[key]

    def below(self, start: str | None, layer: str | None) -> bool:
        """Whether relevance from ``start`` reaches ``layer`` (``None``: the input)."""
        nodes = self.reachable(start)
        if layer is None:
            leaves = self.leaves()  # Flat / WSquare at the input do not reach x itself
            return any(any(getattr(n, "variable", None) is leaf for leaf in leaves)
                       for n in nodes)
        node = self.outputs[layer].grad_fn
        return node is not None and node in nodes and layer != start

    def input_relevance(self, grads: Sequence[Tensor | None]) -> Tensor:
        """Input relevance from the gradients at :meth:`leaves` (leading dims allowed)."""
        gx = grads[0]
        if self.composite.attribution == "gradient":
            return gx
        relevance = self.x.detach() * gx
        for leaf, g in zip(self.leaves()[1:], grads[1:]):
            relevance = relevance + leaf.detach() * g
        return relevance

    # ------------------------------------------------------------------ backward
    def propagate(self, start: str | None, grads: Tensor | Rows,
                  stages: Sequence[tuple[str, Tensor]] = (),
                  record: Sequence[str] = (),
                  reduce: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
                  to_input: bool = True,
                  batch_size: int | None = None, progress: bool | None = None,
                  desc: str = "concepts") -> tuple[Tensor | None, dict[str, Tensor]]:
        """Propagate a batch of gradients from ``start`` down to the input.

        Parameters
        ----------
        start
            The layer the gradients sit at (``None``: the model output).
        grads
            ``(B, batch, *shape)``: ``B`` gradients (already masked) at ``start``; or
            ``(B, rows)`` with ``rows(lo, hi)`` making gradients ``lo`` to ``hi`` (so
            that only one chunk is in memory at a time).
        stages
            Lower layers ``(name, mask)`` passed on the way, top-down: the gradient
            arriving there from the previous stage is multiplied by ``mask``
            (broadcastable to ``(B, batch, *shape)``).
        record
            Layers whose relevance is returned: conditioned layers (after their
            mask) or layers below the last stage.
        reduce
            Per recorded layer, a function applied to each chunk of its relevance
            (e.g. the relevance per concept), so the full maps are never kept.
        to_input
            Whether to propagate to the input (else only to the recorded layers).
        batch_size
            Gradients per vmapped backward; 1: one plain backward each.  ``None``:
            chosen from the input size (:data:`AUTO_BUDGET`).
        progress
            Progress bar over chunks (``None``: when several chunks and a terminal).

        Returns
        -------
        relevance
            ``(B, batch, *input)`` input relevance, or ``None`` without ``to_input``.
        recorded
            Layer name -> relevance ``(B, batch, *shape)``, or what ``reduce`` made of it.
        """
        if isinstance(grads, Tensor):
            B, rows = grads.shape[0], lambda lo, hi: grads[lo:hi]
        else:
            B, rows = grads
        batch_size = self._batch_size(B, batch_size)
        chain = [start] + [name for name, _ in stages]
        last = chain[-1]
        staged = set(chain[1:])
        below = [n for n in record if n not in staged and n != start]
        leaves = self.leaves() if to_input else []
        final_inputs = leaves + [self.outputs[n] for n in below]
        chunks = math.ceil(B / batch_size)
        pieces: list[Tensor | None] = []
        recorded: dict[str, list[Tensor]] = {n: [] for n in record}
        reduce = reduce or {}

        def keep(name: str, g: Tensor) -> None:
            r = self.relevance(name, g)
            recorded[name].append(reduce[name](r) if name in reduce else r)

        with tqdm(total=B, desc=desc, unit="concept",
                  disable=not show_progress(progress, chunks)) as bar:
            for lo in range(0, B, batch_size):
                g = rows(lo, min(lo + batch_size, B))
                if start in recorded:
                    keep(start, g)
                upper = start
                for name, mask in stages:
                    (g,) = _vjp(self._top(upper), [self.outputs[name]], g, batch_size)
                    g = g * (mask[lo:lo + batch_size] if mask.shape[0] > 1 else mask)
                    if name in recorded:
                        keep(name, g)
                    upper = name
                if final_inputs:
                    res = _vjp(self._top(last), final_inputs, g, batch_size)
                    if to_input:
                        pieces.append(self.input_relevance(res[:len(leaves)]))
                    for name, r in zip(below, res[len(leaves):]):
                        keep(name, r)
                bar.update(g.shape[0])
        relevance = torch.cat(pieces) if to_input else None
        return relevance, {n: torch.cat(v) for n, v in recorded.items()}

    def pull(self, start: str | None, grads: Tensor, layer: str,
             batch_size: int | None = None) -> Tensor:
        """Gradients ``(B, batch, *shape)`` at ``layer`` from ``B`` gradients at ``start``."""
        B = grads.shape[0]
        batch_size = self._batch_size(B, batch_size)
        return torch.cat([_vjp(self._top(start), [self.outputs[layer]],
                               grads[lo:lo + batch_size], batch_size)[0]
                          for lo in range(0, B, batch_size)])

    def _batch_size(self, B: int, batch_size: int | None) -> int:
        if batch_size is None:
            return max(1, min(B, AUTO_BUDGET // max(1, self.x.numel())))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return batch_size

    def _top(self, name: str | None) -> Tensor:
        return self.outputs[name] if name else self.output


def _vjp(output: Tensor, inputs: Sequence[Tensor], grads: Tensor, batch_size: int
         ) -> list[Tensor]:
    """``grads[b]^T d output / d inputs`` for every ``b``, keeping the graph."""
    def one(g: Tensor) -> tuple[Tensor, ...]:
        return torch.autograd.grad(output, inputs, g, retain_graph=True, materialize_grads=True)

    if batch_size == 1 or grads.shape[0] == 1:
        rows = [one(g) for g in grads]
        return [torch.stack(col) for col in zip(*rows)]
    return list(torch.func.vmap(one)(grads))


@contextlib.contextmanager
def capture(model: nn.Module, inputs: Tensor, composite: Composite | None,
            layers: Sequence[str], *, output_relevance: str = "logit",
            audit: str = "warn") -> Iterator[Forward]:
    """Run ``model(inputs)`` once with ``composite`` attached, keeping layer outputs.

    The rules, canonizers and layer keepers are bound to this call (nothing is attached
    to the model); backward passes must run inside the block.

    Parameters
    ----------
    model, inputs, composite
        As for :func:`lrp.explain`.
    layers
        Module names whose outputs (and activations) are kept.
    output_relevance
        ``"logit"`` or ``"normalized"``, as for :func:`lrp.explain`.
    audit
        ``"warn"``, ``"strict"`` or ``"off"``, as for :func:`lrp.explain`.
    """
    check_inputs(inputs)
    if output_relevance not in ("logit", "normalized"):
        raise ValueError("output_relevance must be 'logit' or 'normalized'")
    if audit not in ("warn", "strict", "off"):
        raise ValueError("audit must be 'warn', 'strict' or 'off'")
    layers = list(dict.fromkeys(layers))
    modules = check_layers(model, layers)
    composite = composite if composite is not None else Composite(name="GradientXInput")
    x = inputs.detach().clone().requires_grad_(True)
    trace = Trace(inputs=[x])
    outputs: dict[str, Tensor] = {}
    activations: dict[str, Tensor] = {}
    order: dict[str, int] = {}

    def keeper(name: str):
        def hook(module: nn.Module, args: tuple, output) -> Tensor:
            if not isinstance(output, Tensor):
                raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                                "condition on a module returning one tensor")
            if name in outputs:
                raise ValueError(f"layer {name!r} is called more than once in one forward; "
                                 "concept conditions need a module called once")
            outputs[name] = output
            activations[name] = output.detach().clone()
            order[name] = len(order)
            # The next operation gets a copy: an in-place op there (``out += identity``
            # in a torchvision ResNet block) would otherwise rewrite the kept tensor and
            # its autograd node, and the relevance "at the layer" would include the
            # bypass.
            return output.clone()
        return hook

    attachment, auditor = bind(composite, model, x, audit=audit)
    keepers = {module: keeper(name) for name, module in modules.items()}

    def keep(module: nn.Module, args: tuple, output):
        hook = keepers.get(module)
        return hook(module, args, output) if hook is not None else None

    # the keepers see the output after the rule, before the auditor stamps it
    attachment.scope.observers.insert(0, keep)
    with contextlib.ExitStack() as stack:
        stack.enter_context(attachment.scope)
        with torch.enable_grad(), tracing(trace):
            output = classifier_output(run_model(model, x))
        missing = [n for n in layers if n not in outputs]
        if missing:
            raise ValueError(f"layer(s) {missing} were not called in the forward pass")
        for name in layers:
            if not outputs[name].requires_grad:
                raise ValueError(f"the output of layer {name!r} does not depend on the input")
        _finish_forward(output, trace, auditor, attachment, audit)
        forward = Forward(x, output, trace, composite, outputs, activations, order,
                          normalized=output_relevance == "normalized")
        yield forward
