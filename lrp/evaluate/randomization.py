"""Randomization tests: model-parameter randomization (Adebayo et al. 2018) and the
random-logit test (Sixt et al. 2020).

**Model-parameter randomization (MPRT).**  The layers with parameters are
re-initialized from the top (output) down, in the model's execution order:
``"cascade"`` keeps the layers above randomized (Adebayo et al.'s cascading test),
``"independent"`` randomizes one layer at a time.  After each step the inputs are
explained again (same targets) and each explanation is compared with the original
one by every similarity measure (:mod:`lrp.evaluate.similarity`).  A method that
explains the model should lose its similarity as the layers are randomized (low
scores pass; Adebayo et al. found guided backprop's maps barely changing).  All work
is done on a deep copy: the model passed in is never changed.

A layer is re-initialized with its own ``reset_parameters()`` (PyTorch's default
initialization; BatchNorm: weight 1, bias 0, fresh running statistics), under a seed
drawn from ``generator`` and with torch's global random state restored afterwards;
parameters of layers without ``reset_parameters`` are redrawn from a normal
distribution with their own mean and standard deviation.  Pass ``randomize`` to use
another scheme.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..batching import Seed, make_generator, show_progress
from ..targets import Target
from .explainers import Explainer, explain_batched, is_method
from .features import feature_relevance
from .outputs import prepare
from .result import Scores
from .similarity import Similarity, similarity_function

__all__ = ["model_parameter_randomization", "random_logit", "parameter_layers"]

Randomize = Callable[[str, nn.Module, Optional[torch.Generator]], None]


def _need_method(explanation: Explainer, metric: str) -> None:
    if not is_method(explanation):
        raise TypeError(f"{metric} explains other models or inputs than the given ones: pass an "
                        "lrp composite or a method, not a relevance tensor")


def parameter_layers(model: nn.Module, example: Tensor) -> List[str]:
    """Names of the modules that hold parameters themselves, in execution order (the
    order of their first call on ``example``)."""
    owners = {name: module for name, module in model.named_modules()
              if any(True for _ in module.parameters(recurse=False))}
    order: List[str] = []
    handles = []

    def hook(name: str):
        def record(module, args):
            if name not in order:
                order.append(name)
        return record

    for name, module in owners.items():
        handles.append(module.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order + [n for n in owners if n not in order]


def _seed(generator: Optional[torch.Generator]) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=device))


def reset(name: str, module: nn.Module, generator: Optional[torch.Generator]) -> None:
    """Re-initialize ``module``'s own parameters (the default of ``randomize``)."""
    devices = [p.device for p in module.parameters(recurse=False) if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_seed(generator))
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            return
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                std = float(p.std()) if p.numel() > 1 else 1.0
                p.copy_(torch.randn_like(p) * std + p.mean())


def _similarities(similarity: Union[Similarity, Sequence[Similarity], Dict[str, Similarity]]
                  ) -> Dict[str, Callable[[Tensor, Tensor], Tensor]]:
    if isinstance(similarity, dict):
        items = list(similarity.items())
    elif isinstance(similarity, (list, tuple)):
        items = [(s if isinstance(s, str) else getattr(s, "__name__", f"similarity{i}"), s)
                 for i, s in enumerate(similarity)]
    else:
        items = [(similarity if isinstance(similarity, str) else
                  getattr(similarity, "__name__", "similarity"), similarity)]
    if not items:
        raise ValueError("give at least one similarity measure")
    return {name: similarity_function(s) for name, s in items}


def _prepared_map(relevance: Tensor, x: Tensor, absolute: bool) -> Tensor:
    fmap = feature_relevance(relevance, x)
    return fmap.abs() if absolute else fmap


def model_parameter_randomization(
        model: nn.Module, inputs: Tensor, explanation: Explainer, target: Target = None, *,
        order: str = "cascade",
        similarity: Union[Similarity, Sequence[Similarity], Dict[str, Similarity]] = (
            "spearman", "ssim", "hog"),
        abs: bool = True, layers: Optional[Sequence[str]] = None,
        randomize: Optional[Randomize] = None, generator: Seed = None, batch_size: int = 64,
        progress: Optional[bool] = None) -> Scores:
    """Model-parameter randomization test (see the module doc).

    Parameters
    ----------
    model, inputs, target
        As in :func:`lrp.evaluate.pixel_flipping`.  The targets are resolved once on
        the original model and kept for every randomized one.
    explanation
        An lrp composite or a method (relevance tensors cannot be recomputed).
    order
        ``"cascade"`` (top-down, cumulative) or ``"independent"``.
    similarity
        A name (``"spearman"``, ``"pearson"``, ``"ssim"``, ``"hog"``), a callable
        ``f(a, b) -> (batch,)``, or several as a sequence or a dict name -> measure;
        the first one gives the scores.  The maps compared are the relevance summed
        over channels.
    abs
        Compare absolute relevance (as Adebayo et al. and Quantus do).
    layers
        Names of the modules to randomize (default: every module with its own
        parameters); always in top-down execution order.
    randomize
        ``randomize(name, module, generator)`` re-initializes one module in place
        (default: :func:`reset`).
    generator
        Seed or :class:`torch.Generator` of the re-initialization.
    batch_size
        Samples explained at once.
    progress
        Progress bar over layers and chunks.

    Returns
    -------
    Scores
        ``curves[name]``: ``(batch, n_layers)`` similarity after randomizing each
        layer, top-down; ``labels``: the layer names; ``scores``: the first measure
        averaged over the layers (Quantus' ``return_average_correlation``); lower is
        better.
    """
    _need_method(explanation, "model-parameter randomization")
    if order not in ("cascade", "independent"):
        raise ValueError(f"order must be 'cascade' or 'independent', got {order!r}")
    measures = _similarities(similarity)
    x, _, t, batch_size = prepare(model, inputs, target, batch_size)
    randomized = copy.deepcopy(model)
    available = parameter_layers(randomized, x[:1])
    if layers is None:
        chosen = available
    else:
        unknown = [n for n in layers if n not in available]
        if unknown:
            raise ValueError(f"no layer with parameters named {unknown}; layers: {available}")
        chosen = [n for n in available if n in set(layers)]
    if not chosen:
        raise ValueError("the model has no layers with parameters to randomize")
    top_down = chosen[::-1]
    modules = dict(randomized.named_modules())
    original_state = copy.deepcopy(randomized.state_dict()) if order == "independent" else None
    gen = make_generator(generator)
    randomize = randomize or reset
    chunks = -(-x.shape[0] // batch_size)
    total = chunks * (len(top_down) + 1)
    curves: Dict[str, List[Tensor]] = {name: [] for name in measures}
    with tqdm(total=total, desc="model randomization",
              disable=not show_progress(progress, total)) as bar:
        reference = _prepared_map(explain_batched(explanation, randomized, x, t, batch_size, bar),
                                  x, abs)
        for name in top_down:
            if original_state is not None:
                randomized.load_state_dict(original_state)
            randomize(name, modules[name], gen)
            relevance = explain_batched(explanation, randomized, x, t, batch_size, bar)
            current = _prepared_map(relevance, x, abs)
            for measure, fn in measures.items():
                curves[measure].append(fn(reference, current))
    stacked = {m: torch.stack(v, dim=1) for m, v in curves.items()}
    scores = stacked[next(iter(measures))].mean(dim=1)
    return Scores("MPRT", scores, False, stacked,
                  torch.arange(1, len(top_down) + 1, dtype=torch.float64), top_down)


def random_logit(model: nn.Module, inputs: Tensor, explanation: Explainer, target: Target = None,
                 *, similarity: Similarity = "ssim", abs: bool = False, generator: Seed = None,
                 batch_size: int = 64, progress: Optional[bool] = None) -> Scores:
    """Random-logit test: similarity between the explanation of the target and of a
    class drawn uniformly from the other classes (lower is better).

    Parameters as in :func:`model_parameter_randomization`; ``generator`` draws the
    other classes.

    Returns
    -------
    Scores
        ``scores``: the similarity per sample; ``curves["other_class"]`` (as
        ``(batch, 1)``) the classes drawn.
    """
    _need_method(explanation, "the random-logit test")
    fn = similarity_function(similarity)
    x, output, t, batch_size = prepare(model, inputs, target, batch_size)
    classes = output.shape[1]
    if classes < 2:
        raise ValueError("the random-logit test needs a model with at least 2 classes")
    gen = make_generator(generator)
    device = gen.device if gen is not None else x.device
    shift = torch.randint(1, classes, (x.shape[0],), generator=gen, device=device).to(x.device)
    other = (t + shift) % classes
    chunks = -(-x.shape[0] // batch_size)
    with tqdm(total=2 * chunks, desc="random logit",
              disable=not show_progress(progress, 2 * chunks)) as bar:
        a = explain_batched(explanation, model, x, t, batch_size, bar)
        b = explain_batched(explanation, model, x, other, batch_size, bar)
    scores = fn(_prepared_map(a, x, abs), _prepared_map(b, x, abs))
    return Scores("RandomLogit", scores, False, {"other_class": other[:, None]})
