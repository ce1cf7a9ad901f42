"""Measure explanation quality: faithfulness, randomization, localisation, complexity
and robustness metrics, batched.

Every metric takes ``(model, inputs, explanation, target=None, ...)`` where
``explanation`` is a relevance tensor, an lrp composite or a method (a callable
``method(model, inputs, target=...)`` returning an :class:`lrp.Explanation`, see
:mod:`lrp.evaluate.explainers`), and returns :class:`Scores`: one score per sample,
plus the curves where the metric has curves.  Perturbed inputs go through the model
in no-grad chunks of at most ``batch_size`` rows (:mod:`lrp.batching`), on the
inputs' device, with a progress bar; randomness comes from an explicit ``generator``
(an int seed or a :class:`torch.Generator`).

Example
-------
>>> from lrp.demo import load_demo_model, demo_inputs
>>> from lrp.composites import EpsilonPlus
>>> from lrp import evaluate
>>> model = load_demo_model()
>>> x, labels = demo_inputs(8)
>>> s = evaluate.pixel_flipping(model, x, EpsilonPlus(), labels, patch_size=4, generator=0)
>>> s.scores.shape, s.curves["morf"].shape
(torch.Size([8]), torch.Size([8, 65]))
"""
from .compare import DEFAULT_METRICS, METRICS, Comparison, compare
from .complexity import complexity, entropy, gini, sparseness
from .correlation import faithfulness_correlation, pearson
from .explainers import random_method
from .features import blur_fill
from .localisation import pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from .perturbation import abpc, aopc, pixel_flipping
from .randomization import model_parameter_randomization, random_logit
from .result import Scores
from .road import noisy_linear_imputation, road
from .robustness import max_sensitivity
from .similarity import hog, hog_similarity, spearman, ssim

__all__ = [
    "Scores", "pixel_flipping", "abpc", "aopc", "road", "noisy_linear_imputation",
    "faithfulness_correlation", "model_parameter_randomization", "random_logit",
    "relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game", "sparseness",
    "complexity", "max_sensitivity", "compare", "Comparison", "METRICS", "DEFAULT_METRICS",
    "random_method", "blur_fill", "gini", "entropy", "pearson", "spearman", "ssim", "hog",
    "hog_similarity",
]
