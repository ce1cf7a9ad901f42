"""The result every method returns: :class:`Explanation`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .audit import AuditReport

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .frames import InputNames
    from .surrogate import Surrogate


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
        the completeness error for Integrated Gradients and Expected Gradients,
        the efficiency error ``sum(relevance) - (f(x) - phi_0)`` for Kernel SHAP;
        ``None`` otherwise.
    tokens
        Per-token relevance ``(batch, tokens)`` (or ``(batch, k, tokens)``) for
        explanations of token sequences (:func:`lrp.transformers.explain_tokens`):
        ``relevance`` summed over the embedding dimension.
    surrogate
        For the model-agnostic methods (:func:`lrp.lime.lime`,
        :func:`lrp.kernel_shap.kernel_shap`): the interpretable features and the
        linear model fitted on them (:class:`lrp.surrogate.Surrogate`); ``None``
        otherwise.
    input_names
        Names of the input elements, one tuple of names (or ``None``) per sample
        dimension; set with :meth:`named`.
    output_names
        Names of the model's outputs (class names), one per output; set with
        :meth:`named`.
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
    surrogate: Optional[Surrogate] = None
    input_names: Optional[InputNames] = None
    output_names: Optional[Tuple[str, ...]] = None

    def conservation(self) -> Tensor:
        """Per-sample (and per-target) sum of the input relevance."""
        dims = tuple(range(self.target.dim() if self.target is not None else 1,
                           self.relevance.dim()))
        return self.relevance.sum(dim=dims)

    def heatmap(self, **kwargs):
        """Render the relevance of the first sample as an image (see :func:`lrp.image.heatmap`)."""
        from .image import heatmap
        return heatmap(self.relevance[0], **kwargs)

    def named(self, input_names: Any = None, output_names: Any = None) -> Explanation:
        """A copy of the explanation with names for its inputs and outputs.

        The names label the columns of :meth:`to_frame`, the axes and hover texts of
        :mod:`lrp.plot` and the command line's output.  ``None`` keeps the current
        names.

        Parameters
        ----------
        input_names
            For samples of one dimension ``(batch, features)``: one name per feature.
            For any samples: one entry per sample dimension, each ``None`` or one name
            per index of that dimension, e.g. ``[["red", "green", "blue"], None,
            None]`` for the channels of ``(3, H, W)`` images.
        output_names
            One name per model output (the class names).

        Returns
        -------
        Explanation
            The same tensors, with the names checked against the shapes.

        Examples
        --------
        ::

            e = lrp.gradient(model, x).named(["age", "income", "debt"], ["no", "yes"])
            e.to_frame().head()  # columns sample, target, feature, value
        """
        from . import frames
        inputs = frames.input_names(input_names, frames.sample_shape(self))
        outputs = frames.output_names(output_names, self.output.shape[1])
        return dataclasses.replace(
            self, input_names=self.input_names if inputs is None else inputs,
            output_names=self.output_names if outputs is None else outputs)

    def numpy(self) -> np.ndarray:
        """The relevance as a numpy array (on the CPU; half precision as float32)."""
        r = self.relevance.detach().cpu()
        if r.dtype in (torch.float16, torch.bfloat16):
            r = r.float()
        return r.numpy()

    def to_frame(self) -> pd.DataFrame:
        """The relevance as a long-format pandas DataFrame (needs pandas).

        One row per sample, explained target and input element, with the columns
        ``sample``, ``target`` (the class or its name), ``target_index`` (only with
        several targets per sample), the element's coordinates (``feature``; or
        ``channel``, ``row``, ``column`` for images: indices or names) and
        ``value``.  See :mod:`lrp.frames`.

        Returns
        -------
        pandas.DataFrame
        """
        from .frames import to_frame
        return to_frame(self)
