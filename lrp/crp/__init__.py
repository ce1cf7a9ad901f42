"""Concept Relevance Propagation (Achtibat et al. 2023).

Conditional heatmaps show the part of an LRP explanation that flows through chosen
concepts (channels or units, or user-defined masks) of chosen layers::

    from lrp.crp import attribute, top_concepts
    explanation = attribute(model, x, composite,
                            [{"features.28": [c]} for c in range(32)])
    explanation.relevance             # (batch, 32, *input)

    ranking = top_concepts(model, x, composite, "features.28", k=5)
    ranking.ids, ranking.share, ranking.heatmaps

Many concepts share one forward pass and the backward pass down to the conditioned
layer; from there the masked relevance is propagated as a batch.

Also here: relevance and activation maximization over a dataset
(:func:`collect_references`, with an on-disk cache, and :func:`reference_samples`),
attribution graphs (:func:`attribution_graph`) and the concept atlas picture
(:func:`concept_atlas`).
"""
from .atlas import concept_atlas
from .attribution import ConceptRanking, ConditionalExplanation, attribute, top_concepts
from .concepts import ChannelConcept, Concept, MaskConcept
from .conditions import Condition
from .graph import AttributionGraph, GraphNode, attribution_graph
from .maximization import (
    References,
    ReferenceSample,
    collect_references,
    default_cache_dir,
    reference_samples,
    relevance_box,
)

__all__ = [
    "AttributionGraph",
    "ChannelConcept",
    "Concept",
    "ConceptRanking",
    "Condition",
    "ConditionalExplanation",
    "GraphNode",
    "MaskConcept",
    "ReferenceSample",
    "References",
    "attribute",
    "attribution_graph",
    "collect_references",
    "concept_atlas",
    "default_cache_dir",
    "reference_samples",
    "relevance_box",
    "top_concepts",
]
