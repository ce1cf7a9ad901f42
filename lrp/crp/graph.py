"""Attribution graphs: which lower-layer concepts carry a concept's relevance.

Starting from concept ``c`` of a layer, the relevance flowing through ``c`` is
propagated to the next lower layer and split into that layer's concepts; the ``k``
largest become children of ``c``, and each child's relevance (restricted to the
child) is split again at the next layer, and so on (Achtibat et al. 2023, sec. on
attribution graphs).  Every level is one batched backward pass for all its nodes,
sharing one forward pass.  The layers may be inside residual blocks or block outputs;
the relevance of a node is what flows from its parent's layer through it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..composites import Composite
from ..targets import Target
from .attribution import Concepts, concept_of
from .engine import capture


@dataclass
class GraphNode:
    """A concept in an attribution graph.

    Attributes
    ----------
    layer, concept
        Where it is.
    relevance
        The relevance flowing through it along its path from the root.
    share
        ``relevance`` as a fraction of its parent's relevance (1 for the root).
    parent
        Index of the parent node, ``None`` for the root.
    """

    layer: str
    concept: int
    relevance: float
    share: float
    parent: int | None
    depth: int = 0
    children: list[int] = field(default_factory=list)


@dataclass
class AttributionGraph:
    """A concept's relevance decomposed into lower-layer concepts (a tree).

    Attributes
    ----------
    nodes
        All nodes; ``nodes[0]`` is the root, children follow their parents.
    layers
        The root's layer and the lower layers, top-down.
    target
        The explained class.
    output
        The model output ``(1, classes)``.
    """

    nodes: list[GraphNode]
    layers: list[str]
    target: int | None
    output: Tensor

    def __str__(self) -> str:
        lines: list[str] = []

        def walk(i: int, indent: str) -> None:
            node = self.nodes[i]
            lines.append(f"{indent}{node.layer}[{node.concept}]  R={node.relevance:.4g}"
                         + ("" if node.parent is None else f"  ({100 * node.share:.1f}%)"))
            for child in node.children:
                walk(child, indent + "  ")

        walk(0, "")
        return "\n".join(lines)


def attribution_graph(model: nn.Module, inputs: Tensor, composite: Composite | None,
                      layer: str, concept: int, lower: Sequence[str], *, k: int = 3,
                      target: Target = None, concepts: Concepts = None,
                      output_relevance: str = "logit", audit: str = "warn",
                      batch_size: int | None = None) -> AttributionGraph:
    """Decompose the relevance of ``concept`` at ``layer`` into concepts of ``lower`` layers.

    Parameters
    ----------
    model, composite
        As for :func:`lrp.explain`.
    inputs
        One sample ``(1, ...)``.
    layer, concept
        The root concept.
    lower
        Lower layers, top-down; each must receive relevance from the previous one.
    k
        Children kept per node (the most relevant).
    target
        The explained class (``None``: predicted).
    concepts
        Concept definition(s) (default: channels).
    output_relevance, audit, batch_size
        As for :func:`lrp.crp.attribute`.

    Returns
    -------
    AttributionGraph
    """
    if inputs.dim() < 1 or inputs.shape[0] != 1:
        raise ValueError(f"attribution graphs explain one sample, got a batch of shape "
                         f"{tuple(inputs.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    lower = list(lower)
    if layer in lower or len(set(lower)) != len(lower):
        raise ValueError("the layers of an attribution graph must be distinct")
    with capture(model, inputs, composite, [layer, *lower],
                 output_relevance=output_relevance, audit=audit) as fw:
        root_def = concept_of(concepts, layer)
        root_def.check([concept], fw.shape(layer), layer)
        t, seed = fw.targets(target)
        (g,) = fw.grads(seed, [layer])
        g = g * root_def.mask([concept], fw.shape(layer), g)
        root_rel = float(root_def.relevance(fw.relevance(layer, g), fw.shape(layer))[0, concept])
        nodes = [GraphNode(layer, concept, root_rel, 1.0, None)]
        frontier = [(0, g)]
        upper = layer
        for depth, name in enumerate(lower, 1):
            if not fw.below(upper, name):
                raise ValueError(f"no relevance flows from {upper!r} to {name!r}; list the lower "
                                 "layers top-down along one path")
            definition = concept_of(concepts, name)
            shape = fw.shape(name)
            grads = fw.pull(upper, torch.stack([fg for _, fg in frontier]), name, batch_size)
            per_concept = definition.relevance(fw.relevance(name, grads), shape)[:, 0]
            kk = min(k, per_concept.shape[-1])
            values, ids = per_concept.topk(kk, dim=-1)
            next_frontier = []
            for f, (parent, _) in enumerate(frontier):
                parent_rel = nodes[parent].relevance
                for v, c in zip(values[f].tolist(), ids[f].tolist()):
                    share = v / parent_rel if parent_rel != 0 else 0.0
                    nodes.append(GraphNode(name, int(c), float(v), float(share), parent, depth))
                    nodes[parent].children.append(len(nodes) - 1)
                    next_frontier.append((len(nodes) - 1,
                                          grads[f] * definition.mask([int(c)], shape, grads)))
            frontier = next_frontier
            upper = name
        return AttributionGraph(nodes, [layer, *lower], None if t is None else int(t[0]),
                                fw.output.detach())


