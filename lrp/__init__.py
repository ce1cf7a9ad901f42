"""lrp: Layer-wise Relevance Propagation for PyTorch.

Rules are bound to the explained call (:mod:`lrp.scope`; nothing is attached to the
model) and implement LRP through ordinary autograd (see :mod:`lrp.core`).  The main
entry point is :func:`explain`::

    from lrp import explain
    from lrp.composites import EpsilonGammaBox
    from lrp.canonizers import MergeBatchNorm

    composite = EpsilonGammaBox(low=-3.0, high=3.0, canonizers=[MergeBatchNorm()])
    explanation = explain(model, x, composite)
    explanation.relevance  # input-shaped
"""
from .explain import Explanation, explain
from .gradients import (connection_weights, expected_gradients, gradient, gradient_x_input,
                        integrated_gradients, occlusion, smoothgrad)

__version__ = "0.1.0"
__all__ = ["Explanation", "__version__", "connection_weights", "expected_gradients", "explain",
           "gradient", "gradient_x_input", "integrated_gradients", "occlusion", "smoothgrad"]
