"""Conditional attribution (CRP heatmaps) and the top concepts of a prediction."""
from __future__ import annotations

import functools

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor, nn

from ..composites import Composite
from ..explanation import Explanation
from ..targets import Target
from .concepts import ChannelConcept, Concept
from .conditions import Condition, parse_conditions, target_key
from .engine import Forward, capture

Concepts = Union[None, Concept, Mapping[str, Concept]]


@dataclass
class ConditionalExplanation(Explanation):
    """Conditional heatmaps: an :class:`lrp.Explanation` with one map per condition.

    Attributes
    ----------
    relevance
        ``(batch, n_conditions, *input)``: the input relevance flowing through the
        concepts of each condition.
    output
        The model output ``(batch, classes)``.
    target
        ``(batch, n_conditions)``: the explained class of each sample and condition.
    conditions
        The conditions, as :class:`lrp.crp.Condition`.
    concept_relevance
        Recorded layer -> ``(batch, n_conditions, n_concepts)``: the relevance of
        every concept of the layer under each condition.
    activations
        Conditioned and recorded layer -> ``(batch, *layer_output)``: the layer's
        output (before any in-place operation that follows it).
    """

    conditions: list[Condition] = field(default_factory=list)
    concept_relevance: dict[str, Tensor] = field(default_factory=dict)
    activations: dict[str, Tensor] = field(default_factory=dict)

    def heatmap(self, condition: int = 0, sample: int = 0, **kwargs):
        """Render the heatmap of one condition and sample (see :func:`lrp.image.heatmap`)."""
        from ..image import heatmap
        return heatmap(self.relevance[sample, condition], **kwargs)


def concept_of(concepts: Concepts, layer: str) -> Concept:
    """The concept definition of ``layer`` (default: channels)."""
    if concepts is None:
        return ChannelConcept()
    if isinstance(concepts, Concept):
        return concepts
    if not isinstance(concepts, Mapping):
        raise TypeError("concepts must be a Concept or a mapping layer -> Concept, "
                        f"got {concepts!r}")
    found = concepts.get(layer, ChannelConcept())
    if not isinstance(found, Concept):
        raise TypeError(f"concept definition of {layer!r} must be a Concept, got {found!r}")
    return found


def _chain(fw: Forward, condition: Condition) -> tuple[str, ...]:
    """The condition's layers top-down (last called first), checked to lie on one path."""
    chain = tuple(sorted(condition.layers, key=lambda n: -fw.order[n]))
    for upper, lower in zip(chain, chain[1:]):
        if not fw.below(upper, lower):
            raise ValueError(f"{condition!r}: no relevance flows from {upper!r} to {lower!r}; "
                             "the layers of one condition must lie on one path of the network")
    if chain and not fw.below(chain[-1], None):
        raise ValueError(f"{condition!r}: no relevance flows from {chain[-1]!r} to the input")
    return chain


def attribute(model: nn.Module, inputs: Tensor, composite: Composite | None,
              conditions: Sequence[Condition | Mapping], *, record: Sequence[str] = (),
              concepts: Concepts = None, output_relevance: str = "logit", audit: str = "warn",
              batch_size: int | None = None, progress: bool | None = None
              ) -> ConditionalExplanation:
    """Conditional heatmaps of ``model(inputs)`` for many conditions at once.

    The forward pass is shared by all conditions, the backward pass from the output
    to the (topmost) conditioned layer by all conditions with the same target and
    layers; from there the masked relevance of all conditions is propagated as a
    batch (in chunks of ``batch_size``).

    Parameters
    ----------
    model
        A PyTorch model in eval mode; left exactly as it was.
    inputs
        The input batch ``(batch, ...)``.
    composite
        The LRP rules (e.g. :func:`lrp.composites.EpsilonGammaBox`).
    conditions
        A sequence of conditions ``{layer: concept ids, "y": target}`` or
        :class:`lrp.crp.Condition` (see :mod:`lrp.crp.conditions`).
    record
        Layers whose concept relevance under each condition is returned; they must
        be conditioned layers or lie below the conditioned layers.
    concepts
        Concept definition for all layers, or a mapping layer -> definition
        (default: :class:`lrp.crp.ChannelConcept`).
    output_relevance, audit
        As for :func:`lrp.explain`.
    batch_size
        Conditions per batched backward pass (``None``: chosen from the input
        size; 1: one plain backward each).
    progress
        Show a progress bar (``None``: when it takes several chunks, in a terminal).

    Returns
    -------
    ConditionalExplanation
        ``relevance`` is ``(batch, n_conditions, *input)``.  For every condition the
        heatmaps of all concepts of one layer sum to the heatmap of the relevance
        flowing through that layer (for a layer every path passes, the ordinary LRP
        heatmap).

    Raises
    ------
    ValueError
        For unknown layer names, out-of-range concept ids, conditioned layers not
        on one path, or recorded layers not below the conditioned ones.
    """
    conds = parse_conditions(conditions)
    record = list(dict.fromkeys(record))
    layers = list(dict.fromkeys([n for c in conds for n in c.layers] + record))
    with capture(model, inputs, composite, layers, output_relevance=output_relevance,
                 audit=audit) as fw:
        for cond in conds:
            for layer, ids in cond.concepts.items():
                concept_of(concepts, layer).check(ids, fw.shape(layer), layer)
        chains = [_chain(fw, c) for c in conds]
        for cond, chain in zip(conds, chains):
            for name in record:
                if name not in chain and not fw.below(chain[-1] if chain else None, name):
                    raise ValueError(f"cannot record {name!r} for {cond!r}: it is not below "
                                     "the conditioned layers")
        # one backward per target, to all top layers at once
        tops: dict[tuple, list[str]] = {}
        specs: dict[tuple, object] = {}
        for cond, chain in zip(conds, chains):
            key = target_key(cond.target)
            specs[key] = cond.target
            if chain and chain[0] not in tops.setdefault(key, []):
                tops[key].append(chain[0])
        seeds: dict[tuple, tuple[Tensor, Tensor]] = {}
        top_grads: dict[tuple[tuple, str], Tensor] = {}
        for key, spec in specs.items():
            t, seed = fw.targets(spec)  # type: ignore[arg-type]
            seeds[key] = (t, seed)
            for name, g in zip(tops.get(key, []), fw.grads(seed, tops.get(key, []))):
                top_grads[(key, name)] = g

        n = len(conds)
        relevance: list[Tensor | None] = [None] * n
        recorded: dict[str, list[Tensor | None]] = {r: [None] * n for r in record}
        reducers = {name: functools.partial(concept_of(concepts, name).relevance,
                                            shape=fw.shape(name)) for name in record}
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, chain in enumerate(chains):
            groups.setdefault(chain, []).append(i)
        for chain, idxs in groups.items():
            def rows(lo: int, hi: int, chain=chain, idxs=idxs) -> Tensor:
                out = []
                for i in idxs[lo:hi]:
                    cond, key = conds[i], target_key(conds[i].target)
                    if not chain:
                        out.append(seeds[key][1])
                        continue
                    g = top_grads[(key, chain[0])]
                    out.append(g * _mask(fw, concepts, chain[0], cond.concepts[chain[0]], g))
                return torch.stack(out)

            stages = []
            for name in chain[1:]:
                like = fw.outputs[name]
                stages.append((name, torch.stack(
                    [_mask(fw, concepts, name, conds[i].concepts[name], like) for i in idxs]
                ).unsqueeze(1)))
            heat, rec = fw.propagate(chain[0] if chain else None, (len(idxs), rows), stages,
                                     record, reduce=reducers, batch_size=batch_size,
                                     progress=progress)
            for j, i in enumerate(idxs):
                relevance[i] = heat[j]  # type: ignore[index]
                for name in record:
                    recorded[name][i] = rec[name][j]
        targets = [seeds[target_key(c.target)][0] for c in conds]
        target = torch.stack(targets, 1) if all(t is not None for t in targets) else None
        return ConditionalExplanation(
            relevance=torch.stack(relevance, 1).detach(),  # type: ignore[arg-type]
            output=fw.output.detach(), target=target,
            method=f"CRP[{fw.composite.name}]",
            conditions=conds,
            concept_relevance={k: torch.stack(v, 1).detach()  # type: ignore[arg-type]
                               for k, v in recorded.items()},
            activations=dict(fw.activations))


def _mask(fw: Forward, concepts: Concepts, layer: str, ids: Sequence[int], like: Tensor) -> Tensor:
    return concept_of(concepts, layer).mask(ids, fw.shape(layer), like)


@dataclass
class ConceptRanking:
    """The most relevant concepts of one layer for a prediction.

    Attributes
    ----------
    layer
        The layer.
    ids
        ``(batch, k)`` concept ids, most relevant first.
    relevance
        ``(batch, k)`` their relevance.
    share
        ``(batch, k)`` their share of the layer's total relevance (``relevance /
        total``).
    total
        ``(batch,)`` the total relevance at the layer (the sum over all concepts).
    concept_relevance
        ``(batch, n_concepts)`` the relevance of every concept of the layer.
    heatmaps
        ``(batch, k, *input)`` the conditional heatmap of each top concept, or
        ``None``.
    heatmap
        ``(batch, *input)`` the ordinary LRP heatmap, or ``None``.
    output, target
        The model output and the explained class per sample.
    activations
        ``(batch, *layer_output)`` the layer's output.
    """

    layer: str
    ids: Tensor
    relevance: Tensor
    share: Tensor
    total: Tensor
    concept_relevance: Tensor
    heatmaps: Tensor | None
    heatmap: Tensor | None
    output: Tensor
    target: Tensor | None
    activations: Tensor


def top_concepts(model: nn.Module, inputs: Tensor, composite: Composite | None, layer: str,
                 k: int = 8, *, target: Target = None, concept: Concept | None = None,
                 heatmaps: bool = True, heatmap: bool = False, output_relevance: str = "logit",
                 audit: str = "warn", batch_size: int | None = None,
                 progress: bool | None = None) -> ConceptRanking:
    """The ``k`` most relevant concepts of ``layer``, their shares and conditional heatmaps.

    One forward and one backward to ``layer`` rank the concepts; the heatmaps of
    the top ``k`` are then propagated from ``layer`` as a batch.

    Parameters
    ----------
    model, inputs, composite
        As for :func:`lrp.explain`.
    layer
        Module name.
    k
        Number of concepts (at most the layer's).
    target
        ``None`` (predicted class), an int, or one class per sample.
    concept
        Concept definition of the layer (default: channels).
    heatmaps
        Compute the conditional heatmaps of the top concepts.
    heatmap
        Also compute the ordinary LRP heatmap (one more backward pass).
    output_relevance, audit, batch_size, progress
        As for :func:`attribute`.

    Returns
    -------
    ConceptRanking
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    concept = concept if concept is not None else ChannelConcept()
    with capture(model, inputs, composite, [layer], output_relevance=output_relevance,
                 audit=audit) as fw:
        t, seed = fw.targets(target)
        (g,) = fw.grads(seed, [layer])
        shape = fw.shape(layer)
        per_concept = concept.relevance(fw.relevance(layer, g), shape)
        k = min(k, per_concept.shape[-1])
        values, ids = per_concept.topk(k, dim=-1)
        total = per_concept.sum(-1)
        safe = torch.where(total == 0, torch.ones_like(total), total)
        share = torch.where(total[:, None] == 0, torch.zeros_like(values), values / safe[:, None])
        maps = None
        if heatmaps:
            masks = torch.stack([torch.stack([concept.mask([int(ids[s, j])], shape, g)
                                              for s in range(fw.batch)]) for j in range(k)])
            maps, _ = fw.propagate(layer, g.unsqueeze(0) * masks, batch_size=batch_size,
                                   progress=progress)
            maps = maps.transpose(0, 1)  # type: ignore[union-attr]
        full = None
        if heatmap:
            full, _ = fw.propagate(None, seed.unsqueeze(0), batch_size=1, progress=False)
            full = full[0]  # type: ignore[index]
        return ConceptRanking(layer, ids, values.detach(), share.detach(), total.detach(),
                              per_concept.detach(), None if maps is None else maps.detach(),
                              None if full is None else full.detach(), fw.output.detach(), t,
                              fw.activations[layer])
