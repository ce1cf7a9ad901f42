"""The result every method returns: :class:`Explanation`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from torch import Tensor

from .audit import AuditReport


@dataclass
class Explanation:
    """The result of every attribution method.

    Attributes
    ----------
    relevance
        Input-shaped relevance ``(batch, ...)``; with several targets per sample
        ``(batch, n_targets, ...)``.
    output
        The model output ``(batch, classes)`` (logits when the final softmax was
        stripped).
    target
        The explained class per sample ``(batch,)`` or ``(batch, n_targets)``;
        ``None`` for a custom output-relevance function.
    method
        Name of the method / composite.
    layer_relevance
        Relevance at the outputs of the requested layers (same leading dims as
        ``relevance``), keyed by module name.
    layer_sums
        Per-sample relevance sum at the output of every ruled layer (when
        ``layer_sums=True`` was asked for), keyed by module name.
    audit
        The coverage audit of the forward pass.
    convergence
        For methods with a decomposition property, the per-sample (and per-target)
        error of that property: ``sum(relevance) - (f(x) - f(x_ref))`` for DeepLift,
        the completeness error for Integrated Gradients and Expected Gradients;
        ``None`` otherwise.
    tokens
        Per-token relevance ``(batch, tokens)`` (or ``(batch, k, tokens)``) for
        explanations of token sequences (:func:`lrp.transformers.explain_tokens`):
        ``relevance`` summed over the embedding dimension.
    """

    relevance: Tensor
    output: Tensor
    target: Optional[Tensor]
    method: str = ""
    layer_relevance: Dict[str, Tensor] = field(default_factory=dict)
    layer_sums: Dict[str, Tensor] = field(default_factory=dict)
    audit: Optional[AuditReport] = None
    convergence: Optional[Tensor] = None
    tokens: Optional[Tensor] = None

    def conservation(self) -> Tensor:
        """Per-sample (and per-target) sum of the input relevance."""
        dims = tuple(range(self.target.dim() if self.target is not None else 1,
                           self.relevance.dim()))
        return self.relevance.sum(dim=dims)

    def heatmap(self, **kwargs):
        """Render the relevance of the first sample as an image (see :func:`lrp.image.heatmap`)."""
        from .image import heatmap
        return heatmap(self.relevance[0], **kwargs)
