"""The gradient family: Gradient, Gradient x Input, SmoothGrad (and SmoothGrad^2,
VarGrad), Integrated Gradients, Expected Gradients, and the gradient-free Occlusion
and Connection Weights.

Every method returns an :class:`lrp.Explanation` and selects targets like
:func:`lrp.explain`: the predicted class by default, an int, one class per sample, or
a ``(batch, k)`` tensor of ``k`` classes per sample (relevance ``(batch, k, ...)``;
each forward is shared by the ``k`` targets).  A target *function* is not supported:
these methods differentiate (or evaluate) class scores.

The gradients are computed by :func:`lrp.explain` with a composite whose
``attribution`` is ``"gradient"``.  With ``composite=None`` that is the plain
gradient; with an LRP composite it is the *modified gradient* ``g`` of the rules (the
ratio ``R / x`` at the input: ``x * g`` is the LRP relevance).  Each gradient method
integrates one of two per-pass quantities:

* the gradient ``g(z)`` (Gradient, SmoothGrad ``mean`` / ``squared`` / ``vargrad``,
  Integrated and Expected Gradients): the plain or the modified gradient.  Rules whose
  relevance is not ``x * g`` at the model input (:class:`lrp.rules.Flat`,
  :class:`~lrp.rules.WSquare`, :class:`~lrp.rules.ZBox` on a layer fed by the input)
  have no modified gradient there, and a :class:`ValueError` says so;
* the input-times-gradient ``z * g(z)`` (Gradient x Input, SmoothGrad ``x_input``):
  with an LRP composite this is the LRP relevance of ``z`` (exact rules included).

Occlusion and Connection Weights use no gradient; a composite is an error there.

Many-pass methods evaluate the model on ``n_passes x batch`` inputs, in chunks of at
most ``batch_size`` inputs (pass-major: pass 0 of every sample, then pass 1, ...),
with a tqdm progress bar over chunks.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from torch import Tensor, nn

from . import rules as R
from .attach import check_model, classifier_output, execution_order, run_model
from .audit import AuditReport, op_name
from .batching import (RowSums, Seed, make_generator, model_outputs, per_sample, positive_int,
                       randn_like, run_chunked)
from .composites import Activation, Composite, Dropout, GlobalTypeMap
from .core import graph_nodes
from .explain import explain, final_softmax
from .explanation import Explanation
from .probe import probe
from .rules import Rule
from .scope import Scope, Substitution
from .targets import (Target, check_class_target, check_inputs, layout, pick, resolve_target,
                      target_sums)

Baseline = Union[None, float, Tensor]

#: SmoothGrad modes.
SMOOTHGRAD_MODES = ("mean", "x_input", "squared", "vargrad")
#: Quadrature rules of Integrated Gradients.
IG_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
              "gausslegendre")

# Rules whose relevance at the model input is not ``x * grad`` (see lrp.core.surrogate_inputs).
_EXACT_AT_INPUT = (R.Flat, R.ZBox)


# --------------------------------------------------------------------------- helpers

def _noise_level(value) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"noise_level must be a finite number >= 0, got {value}")
    return value


def _no_composite(composite: Composite | None, method: str, why: str) -> None:
    if composite is not None:
        raise ValueError(f"{method} cannot use a composite: {why}")


def _method(name: str, composite: Composite | None) -> str:
    return name if composite is None else f"{name}[{composite.name}]"


@contextlib.contextmanager
def _session(model: nn.Module, x: Tensor, strip_softmax: bool):
    """The model as the method's own no-gradient passes see it: checked, and its final
    softmax stripped if asked for (the explanations inside pass ``strip_softmax`` to
    :func:`lrp.explain`, whose scope shadows this one)."""
    check_model(model)
    last = final_softmax(model, x) if strip_softmax else None
    with Scope(model, substitution=Substitution(identity={last} if last is not None else set())):
        yield


def _check_modified_gradient(model: nn.Module, x: Tensor, composite: Composite) -> None:
    """Raise if a rule of ``composite`` returns exact (non ``x * grad``) relevance at the
    model input, where no modified gradient exists."""
    mapping = composite.bind(model, x).mapping or {}
    fed = probe(model, x).input_fed
    rules = {n: rule for n, rule in mapping.items()
             if isinstance(rule, _EXACT_AT_INPUT) and n in fed}
    if rules:
        desc = ", ".join(f"{r!r} on {n!r}" for n, r in rules.items())
        raise ValueError(
            f"{composite.name} has no modified gradient: {desc} receives the model input "
            "and returns exact relevance there, not input x gradient.  Use a method that "
            "returns relevance (gradient_x_input, smoothgrad(mode='x_input'), lrp.explain) "
            "or a composite without Flat/WSquare/ZBox at the input layer")


def _engine(composite: Composite | None, kind: str) -> tuple[Composite, bool]:
    """The composite :func:`lrp.explain` runs for ``kind`` (``"gradient"`` or
    ``"x_input"``), and whether its result is still to be multiplied by the input."""
    if composite is None:
        return Composite(name="Gradient", attribution="gradient"), kind == "x_input"
    if composite.attribution == "gradient":
        return composite, kind == "x_input"
    if kind == "x_input":
        return composite, False
    return Composite(*composite.primitives, canonizers=composite.canonizers,
                     attribution="gradient", name=composite.name), False


class _Attributor:
    """One gradient (or input x gradient) evaluation per chunk, through :func:`explain`.

    The coverage audit runs on the first chunk only, and only with a composite (the
    plain gradient needs no rule coverage).
    """

    def __init__(self, model: nn.Module, x: Tensor, composite: Composite | None, kind: str,
                 strip_softmax: bool = False):
        if kind == "gradient" and composite is not None:
            _check_modified_gradient(model, x, composite)
        self.model = model
        self.strip_softmax = strip_softmax
        self.inner, self.times_input = _engine(composite, kind)
        self.audit_mode = "warn" if composite is not None else "off"
        self.audit: AuditReport | None = None

    def explain(self, z: Tensor, target: Target) -> Explanation:
        e = explain(self.model, z, self.inner, target=target, audit=self.audit_mode,
                    strip_softmax=self.strip_softmax)
        if self.audit_mode != "off":
            self.audit, self.audit_mode = e.audit, "off"
        if self.times_input:
            e.relevance = e.relevance * layout(z.detach(), e.target)
        return e

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        return self.explain(z, t).relevance


def _prepare(model: nn.Module, inputs: Tensor, target: Target, batch_size: int
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Detached inputs, the model output on them and the resolved targets."""
    x = inputs.detach()
    output = model_outputs(model, x, batch_size)
    return x, output, resolve_target(target, output)


def _validate(inputs: Tensor, target: Target, batch_size: int) -> int:
    check_inputs(inputs)
    check_class_target(target)
    return positive_int(batch_size, "batch_size")


def _per_sample_range(x: Tensor) -> Tensor:
    flat = x.flatten(1)
    return per_sample(flat.amax(1) - flat.amin(1), x)


# --------------------------------------------------------------------------- gradients

def _single_pass(model, inputs, target, composite, kind, strip_softmax, name) -> Explanation:
    check_inputs(inputs)
    check_class_target(target)
    with _session(model, inputs, strip_softmax):
        e = _Attributor(model, inputs, composite, kind, strip_softmax).explain(inputs, target)
    return Explanation(e.relevance, e.output, e.target, _method(name, composite), audit=e.audit)


def gradient(model: nn.Module, inputs: Tensor, *, target: Target = None,
             composite: Composite | None = None,
             strip_softmax: bool = False) -> Explanation:
    """The gradient of the target score with respect to the input.

    Parameters
    ----------
    model
        A model mapping ``(batch, ...)`` to ``(batch, classes)``, in eval mode.
    inputs
        The input batch (floating point, finite).
    target
        As in :func:`lrp.explain`: ``None`` (predicted class), an int, one class per
        sample, or a ``(batch, k)`` tensor.
    composite
        ``None``: the plain gradient ``df_c/dx``.  An LRP composite: the modified
        gradient of its rules (``explain(...).relevance / x`` wherever ``x != 0``);
        a :class:`ValueError` for composites with Flat/WSquare/ZBox at the input
        layer, which have none.  An ``attribution="gradient"`` composite such as
        :func:`lrp.composites.GuidedBackprop`: its gradient.
    strip_softmax
        Differentiate the logits when the last module is a softmax / log-softmax /
        sigmoid (as in :func:`lrp.explain`).

    Returns
    -------
    Explanation
        ``relevance`` is the gradient, input-shaped (``(batch, k, ...)`` for ``k``
        targets per sample).
    """
    return _single_pass(model, inputs, target, composite, "gradient", strip_softmax, "Gradient")


def gradient_x_input(model: nn.Module, inputs: Tensor, *, target: Target = None,
                     composite: Composite | None = None,
                     strip_softmax: bool = False) -> Explanation:
    """Gradient x Input: ``x * df_c/dx``.

    With an LRP composite the result is its LRP relevance, identical to
    ``lrp.explain(model, inputs, composite)`` (``x`` times the modified gradient,
    and the exact input relevance of Flat/WSquare/ZBox).  With an
    ``attribution="gradient"`` composite it is ``x`` times that gradient.  Other
    parameters as in :func:`gradient`.

    Returns
    -------
    Explanation
    """
    return _single_pass(model, inputs, target, composite, "x_input", strip_softmax,
                        "GradientXInput")


def smoothgrad(model: nn.Module, inputs: Tensor, *, target: Target = None,
               mode: str = "mean", n: int = 50, noise_level: float = 0.1,
               seed: Seed = None, composite: Composite | None = None,
               batch_size: int = 64, progress: bool | None = None,
               strip_softmax: bool = False) -> Explanation:
    """SmoothGrad (Smilkov et al. 2017) and its variants over ``n`` noisy copies.

    Copy ``j`` of sample ``x`` is ``z_j = x + sigma * e_j`` with ``e_j ~ N(0, I)`` and
    ``sigma = noise_level * (max(x) - min(x))`` (the range of that sample).  With
    ``g`` the gradient (see ``composite``):

    * ``"mean"``: ``1/n sum_j g(z_j)`` (SmoothGrad);
    * ``"x_input"``: ``1/n sum_j z_j * g(z_j)`` (SmoothGrad x Input; with an LRP
      composite, the mean LRP relevance of the noisy copies);
    * ``"squared"``: ``1/n sum_j g(z_j)^2`` (SmoothGrad^2, Hooker et al. 2019);
    * ``"vargrad"``: ``1/n sum_j (g(z_j) - mean)^2`` (VarGrad, Adebayo et al. 2018).

    The targets are resolved on the clean inputs (the predicted class of ``x``, not
    of each copy).

    Parameters
    ----------
    model, inputs, target, strip_softmax
        As in :func:`gradient`.
    mode
        One of ``"mean"``, ``"x_input"``, ``"squared"``, ``"vargrad"``.
    n
        Number of noisy copies per sample (>= 1).
    noise_level
        Standard deviation of the noise as a fraction of each sample's value range
        (>= 0; 0 gives the gradient itself).
    seed
        An int (a fresh CPU generator with that seed), a :class:`torch.Generator`, or
        ``None`` (torch's global generator).  Copy ``j = 0, ..., n - 1`` draws
        ``torch.randn(inputs.shape)`` from it in turn (on the generator's device),
        so results do not depend on ``batch_size``.
    composite
        ``None``: plain gradients.  An LRP composite: modified gradients for
        ``mean``/``squared``/``vargrad``, LRP relevance for ``x_input`` (see
        :func:`gradient`, :func:`gradient_x_input`).
    batch_size
        Maximum number of inputs per forward/backward pass.
    progress
        Show a progress bar over chunks; ``None``: only when there is more than one
        chunk and stderr is a terminal.

    Returns
    -------
    Explanation
    """
    batch_size = _validate(inputs, target, batch_size)
    if mode not in SMOOTHGRAD_MODES:
        raise ValueError(f"mode must be one of {SMOOTHGRAD_MODES}, got {mode!r}")
    n = positive_int(n, "n")
    level = _noise_level(noise_level)
    generator = make_generator(seed)
    names = {"mean": "SmoothGrad", "x_input": "SmoothGradXInput",
             "squared": "SmoothGrad^2", "vargrad": "VarGrad"}
    with _session(model, inputs, strip_softmax):
        x, output, t = _prepare(model, inputs, target, batch_size)
        attributor = _Attributor(model, x, composite, "x_input" if mode == "x_input"
                                 else "gradient", strip_softmax)
        sigma = level * _per_sample_range(x)
        total: Tensor | None = None
        squares: Tensor | None = None
        shift: Tensor | None = None

        def make_pass(p: int) -> Tensor:
            return x + sigma * randn_like(x.shape, generator, x)

        def consume(p: int, a: int, b: int, v: Tensor) -> None:
            nonlocal total, squares, shift
            if total is None:
                total = v.new_zeros((x.shape[0],) + v.shape[1:])
                if mode == "vargrad":
                    squares, shift = torch.zeros_like(total), torch.zeros_like(total)
            if mode == "vargrad":
                # variance of values shifted by the first copy: no cancellation
                if p == 0:
                    shift[a:b] = v
                v = v - shift[a:b]
                squares[a:b] += v * v
            total[a:b] += v * v if mode == "squared" else v

        run_chunked(make_pass, n, t, attributor, consume, batch_size, progress, names[mode])
    mean = total / n
    if mode == "vargrad":
        mean = (squares / n - mean * mean).clamp_(min=0)
    return Explanation(mean, output, t, _method(names[mode], composite), audit=attributor.audit)


# --------------------------------------------------------------------------- path methods

def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alpha`` in ``[0, 1]`` and weights of an integration rule over ``[0, 1]``.

    ``riemann_left``: ``alpha_i = i/m`` (``i = 0..m-1``); ``riemann_right``:
    ``i = 1..m``; ``riemann_middle``: ``(i + 1/2)/m``; all with weights ``1/m``.
    ``riemann_trapezoid``: ``alpha_i = i/(m-1)``, weights ``1/(m-1)`` halved at both
    ends (``m >= 2``).  ``gausslegendre``: the ``m``-point Gauss-Legendre rule mapped
    to ``[0, 1]``.  ``m = steps`` is always the number of nodes (gradient passes).
    """
    if method not in IG_METHODS:
        raise ValueError(f"method must be one of {IG_METHODS}, got {method!r}")
    m = positive_int(steps, "steps")
    i = np.arange(m, dtype=np.float64)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(m)
        return (nodes + 1) / 2, weights / 2
    if method == "riemann_trapezoid":
        if m < 2:
            raise ValueError("riemann_trapezoid needs steps >= 2")
        weights = np.full(m, 1 / (m - 1))
        weights[[0, -1]] /= 2
        return i / (m - 1), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (i + offset) / m, np.full(m, 1 / m)


def _baseline(baseline: Baseline, x: Tensor) -> Tensor:
    """The baseline as a tensor of shape ``(1, ...)`` or ``x.shape``."""
    if baseline is None:
        return torch.zeros_like(x[:1])
    if isinstance(baseline, Tensor):
        b = baseline.detach().to(device=x.device, dtype=x.dtype)
    else:
        b = torch.full_like(x[:1], float(baseline))
    if b.shape == x.shape[1:]:
        b = b.unsqueeze(0)
    if b.shape != x.shape and b.shape != (1,) + x.shape[1:]:
        raise ValueError(f"baseline of shape {tuple(b.shape)} does not fit inputs of "
                         f"shape {tuple(x.shape)}: give one sample {tuple(x.shape[1:])} or "
                         f"one per sample {tuple(x.shape)}")
    if not torch.isfinite(b).all():
        raise ValueError("baseline contains NaN or infinite values")
    return b


def integrated_gradients(model: nn.Module, inputs: Tensor, *, target: Target = None,
                         baseline: Baseline = None, steps: int = 50,
                         method: str = "riemann_middle",
                         composite: Composite | None = None, batch_size: int = 64,
                         progress: bool | None = None,
                         strip_softmax: bool = False) -> Explanation:
    """Integrated Gradients (Sundararajan et al. 2017).

    ``R = (x - x') * sum_i w_i g(x' + alpha_i (x - x'))``, the integral
    ``int_0^1 g(x' + alpha (x - x')) d alpha`` by the rule ``method`` with ``steps``
    nodes (see :func:`quadrature`).  ``Explanation.convergence`` holds the
    completeness error ``sum(R) - (f(x) - f(x'))`` per sample (and target), which
    vanishes as ``steps`` grows for the plain gradient.

    Parameters
    ----------
    model, inputs, target, strip_softmax
        As in :func:`gradient`.
    baseline
        ``x'``: ``None`` (zeros), a number, one sample (shape ``inputs.shape[1:]`` or
        ``(1, ...)``) for all, or one per sample (``inputs.shape``).
    steps
        Number of gradient evaluations per sample (>= 1; >= 2 for the trapezoid).
    method
        ``"riemann_middle"`` (default), ``"riemann_left"``, ``"riemann_right"``,
        ``"riemann_trapezoid"`` or ``"gausslegendre"``.  Gauss-Legendre converges much
        faster on smooth models (tanh, softplus, GELU); on ReLU networks, whose
        gradient jumps along the path, the midpoint rule is as good or better.
    composite
        An LRP composite integrates its modified gradient along the path
        (see :func:`gradient`); completeness then no longer holds.
    batch_size, progress
        As in :func:`smoothgrad`.

    Returns
    -------
    Explanation
    """
    batch_size = _validate(inputs, target, batch_size)
    alphas, weights = quadrature(method, steps)
    with _session(model, inputs, strip_softmax):
        x, output, t = _prepare(model, inputs, target, batch_size)
        base = _baseline(baseline, x)
        attributor = _Attributor(model, x, composite, "gradient", strip_softmax)
        delta = x - base
        total = RowSums(x.shape[0])

        def make_pass(p: int) -> Tensor:
            return base + float(alphas[p]) * delta

        def consume(p: int, a: int, b: int, v: Tensor) -> None:
            total.add(a, b, float(weights[p]) * v)

        run_chunked(make_pass, len(alphas), t, attributor, consume, batch_size, progress,
             "IntegratedGradients")
        relevance = layout(delta, t) * total.value
        reference = model_outputs(model, base, batch_size).expand_as(output)
    convergence = target_sums(relevance, t) - (pick(output, t) - pick(reference, t))
    return Explanation(relevance, output, t, _method("IntegratedGradients", composite),
                       audit=attributor.audit, convergence=convergence)


def _check_background(background: Tensor, inputs: Tensor) -> None:
    """A clear ValueError unless ``background`` holds N >= 1 finite samples shaped like
    those of ``inputs``."""
    if not isinstance(background, Tensor) or background.dim() != inputs.dim() \
            or background.shape[1:] != inputs.shape[1:] or background.shape[0] < 1:
        raise ValueError(f"background must be a tensor of N >= 1 samples of shape "
                         f"{tuple(inputs.shape[1:])}, got "
                         f"{tuple(background.shape) if isinstance(background, Tensor) else background!r}")
    if not torch.isfinite(background).all():
        raise ValueError("background contains NaN or infinite values")


def expected_gradients(model: nn.Module, inputs: Tensor, background: Tensor, *,
                       target: Target = None, n: int = 50, noise_level: float = 0.0,
                       seed: Seed = None, composite: Composite | None = None,
                       batch_size: int = 64, progress: bool | None = None,
                       strip_softmax: bool = False) -> Explanation:
    """Expected Gradients (Erion et al. 2021), also known as GradientSHAP.

    For each sample ``x`` and draw ``j = 1..n``: a baseline ``x'_j`` uniformly from
    ``background`` (with replacement), ``alpha_j ~ U(0, 1)`` and the point
    ``z_j = x'_j + alpha_j (x - x'_j) + sigma e_j`` (``e_j ~ N(0, I)``, ``sigma =
    noise_level * (max(x) - min(x))``); then ``R = 1/n sum_j (x - x'_j) * g(z_j)``.
    ``Explanation.convergence`` is ``sum(R) - (f(x) - 1/n sum_j f(x'_j))``, whose
    expectation over the ``alpha_j`` is zero without noise.

    Parameters
    ----------
    model, inputs, target, strip_softmax
        As in :func:`gradient`.
    background
        Reference samples ``(N, ...)`` with ``inputs``' sample shape.
    n
        Number of draws per sample.
    noise_level
        Noise standard deviation as a fraction of each sample's value range.
    seed
        As in :func:`smoothgrad`.  Drawn in this order: the baseline indices
        ``randint(N, (n, batch))``, the ``alpha`` as ``rand(n, batch)``, then (if
        ``noise_level > 0``) one ``randn(inputs.shape)`` per draw ``j``.
    composite
        As in :func:`integrated_gradients`.
    batch_size, progress
        As in :func:`smoothgrad`.

    Returns
    -------
    Explanation
    """
    batch_size = _validate(inputs, target, batch_size)
    n = positive_int(n, "n")
    level = _noise_level(noise_level)
    generator = make_generator(seed)
    _check_background(background, inputs)
    with _session(model, inputs, strip_softmax):
        x, output, t = _prepare(model, inputs, target, batch_size)
        bg = background.detach().to(device=x.device, dtype=x.dtype)
        shape = (n, x.shape[0])
        device = generator.device if generator is not None else x.device
        index = torch.randint(bg.shape[0], shape, generator=generator, device=device).to(x.device)
        alpha = torch.rand(shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
        sigma = level * _per_sample_range(x)
        attributor = _Attributor(model, x, composite, "gradient", strip_softmax)
        total = RowSums(x.shape[0])

        def make_pass(p: int) -> Tensor:
            ref = bg[index[p]]
            z = ref + per_sample(alpha[p], x) * (x - ref)
            return z + sigma * randn_like(x.shape, generator, x) if level > 0 else z

        def consume(p: int, a: int, b: int, v: Tensor) -> None:
            total.add(a, b, layout(x[a:b] - bg[index[p, a:b]], t) * v)

        run_chunked(make_pass, n, t, attributor, consume, batch_size, progress, "ExpectedGradients")
        used, inverse = index.unique(return_inverse=True)
        reference = model_outputs(model, bg[used], batch_size)[inverse].mean(0)
    relevance = total.value / n
    convergence = target_sums(relevance, t) - (pick(output, t) - pick(reference, t))
    return Explanation(relevance, output, t, _method("ExpectedGradients", composite),
                       audit=attributor.audit, convergence=convergence)


# --------------------------------------------------------------------------- occlusion

def _sizes(value: int | Sequence[int], lead: Sequence[int], shape: Sequence[int],
           name: str) -> tuple[int, ...]:
    """Per-dimension sizes for samples of ``shape``: a tuple is aligned with the last
    dimensions, the leading ones are taken from ``lead``; an int applies to every
    dimension but the first (channels) when samples have several dimensions."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        given: tuple[int, ...] = (int(value),) * max(len(shape) - 1, 1)
    else:
        given = tuple(value)
    if not 1 <= len(given) <= len(shape):
        raise ValueError(f"{name} {value!r} needs 1 to {len(shape)} entries for samples of "
                         f"shape {tuple(shape)}")
    for v in given:
        positive_int(v, name)
    return tuple(lead[:len(shape) - len(given)]) + tuple(int(v) for v in given)


def _starts(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def occlusion(model: nn.Module, inputs: Tensor, *, window: int | Sequence[int],
              target: Target = None, stride: None | int | Sequence[int] = None,
              fill: float | Tensor = 0.0, composite: Composite | None = None,
              batch_size: int = 64, progress: bool | None = None,
              strip_softmax: bool = False) -> Explanation:
    """Occlusion (Zeiler and Fergus 2014): the output drop when a window is filled.

    Windows ``W`` slide over the sample dimensions with ``stride``; along each
    dimension they start at ``0, s, 2s, ...`` plus one last window flush with the end
    if the others do not reach it, so every element is covered.  For each window the
    drop ``d_W = f(x)_c - f(x with W set to fill)_c`` is spread uniformly over its
    ``|W|`` elements, and every element gets the mean over the windows covering it::

        R_i = mean_{W containing i} d_W / |W|

    On a linear model ``f(x) = w.x + b`` with windows that tile the input (``stride
    == window`` dividing the sizes) this is ``sum_{j in W} w_j (x_j - fill_j) / |W|``
    on each window.

    Parameters
    ----------
    model, inputs, target, strip_softmax
        As in :func:`gradient`.
    window
        Window size: a tuple for the last ``len(window)`` sample dimensions (leading
        dimensions are covered whole, e.g. ``(4, 4)`` on ``(batch, 3, 32, 32)``
        occludes all channels of 4x4 patches), or an int for every sample dimension
        but the first (channels) when samples have several dimensions.
    stride
        Step between windows, given like ``window``; default: ``window``.
    fill
        The occluding value: a number or a tensor broadcastable to ``inputs`` (e.g.
        a blurred copy).
    composite
        Not supported (occlusion evaluates outputs only): must be ``None``.
    batch_size, progress
        As in :func:`smoothgrad`.

    Returns
    -------
    Explanation
    """
    _no_composite(composite, "occlusion", "it evaluates model outputs only, which rules "
                  "do not change")
    batch_size = _validate(inputs, target, batch_size)
    shape = tuple(inputs.shape[1:])
    win = _sizes(window, shape, shape, "window")
    step = win if stride is None else _sizes(stride, win, shape, "stride")
    if any(w > s for w, s in zip(win, shape)):
        raise ValueError(f"window {win} is larger than the samples {shape}")
    try:
        filled = torch.as_tensor(fill, dtype=inputs.dtype, device=inputs.device) \
            .expand_as(inputs)
    except RuntimeError:
        raise ValueError(f"fill of shape {tuple(torch.as_tensor(fill).shape)} is not "
                         f"broadcastable to inputs of shape {tuple(inputs.shape)}") from None
    if not torch.isfinite(filled).all():
        raise ValueError("fill contains NaN or infinite values")
    grids = [_starts(size, w, s) for size, w, s in zip(shape, win, step)]
    windows = [tuple(slice(o, o + w) for o, w in zip(origin, win))
               for origin in itertools.product(*grids)]
    area = math.prod(win)
    with _session(model, inputs, strip_softmax):
        x, output, t = _prepare(model, inputs, target, batch_size)
        scores = pick(output, t)
        lead = (slice(None),) * t.dim()
        total = x.new_zeros(tuple(t.shape) + shape)
        counts = x.new_zeros(shape)
        for w in windows:
            counts[w] += 1

        def make_pass(p: int) -> Tensor:
            occluded = x.clone()
            occluded[(slice(None),) + windows[p]] = filled[(slice(None),) + windows[p]]
            return occluded

        def evaluate(z: Tensor, rows: Tensor) -> Tensor:
            return pick(model_outputs(model, z, batch_size), rows)

        def consume(p: int, a: int, b: int, v: Tensor) -> None:
            drop = (scores[a:b] - v) / area
            region = total[a:b][lead + windows[p]]
            region += drop.reshape(drop.shape + (1,) * len(shape))

        run_chunked(make_pass, len(windows), t, evaluate, consume, batch_size, progress, "Occlusion")
    return Explanation(total / counts, output, t, "Occlusion")


# --------------------------------------------------------------------------- connection weights

_DENSE_MODULES = (nn.Linear, nn.Flatten, nn.Unflatten, nn.Identity, nn.ReLU, nn.Softmax,
                  nn.LogSoftmax) + Dropout + Activation
_ACTIVATIONS = (nn.ReLU, nn.Softmax, nn.LogSoftmax) + Activation
_DENSE_OPS = {
    "Addmm", "Mm", "Mv", "Addmv", "Linear", "Matmul", "T", "Transpose", "Permute", "View",
    "UnsafeView", "Reshape", "ReshapeAlias", "Add", "Sub", "Neg", "Clone", "Alias", "Cat",
    "Split", "SplitWithSizes", "Slice", "Select", "Squeeze", "Unsqueeze", "Expand",
    "ToCopy",
}


class _StraightThrough(Rule):
    """The activation's value with the identity as gradient (activations are skipped)."""

    def apply(self, module, inputs, output, prepared, recorder=None):
        a = inputs[0]
        return output.detach() + (a - a.detach())


def connection_weights(model: nn.Module, inputs: Tensor, *, target: Target = None,
                       times_input: bool = False,
                       composite: Composite | None = None) -> Explanation:
    """Connection Weights (Olden et al. 2004; innsight's ``ConnectionWeights``).

    The sum over all paths from input ``i`` to output ``c`` of the product of the
    weights along the path, ignoring activations and biases: for a chain of dense
    layers, row ``c`` of ``W_L ... W_2 W_1``.  It does not depend on the input
    (the global method); ``times_input=True`` multiplies it by the input (innsight's
    local variant).  Computed as the gradient of the model with every activation's
    gradient replaced by the identity.

    Parameters
    ----------
    model
        A dense network: :class:`torch.nn.Linear` layers, element-wise activations,
        softmax, Flatten/Unflatten, Dropout, Identity, and linear functional
        operations (reshapes, sums of branches).  Anything else (convolutions,
        pooling, normalisation, functional non-linearities) raises a
        :class:`ValueError`.
    inputs
        The input batch; it fixes the sample shape and the predicted classes.
    target
        As in :func:`gradient`.
    times_input
        Multiply by the input.
    composite
        Not supported: must be ``None``.

    Returns
    -------
    Explanation
    """
    _no_composite(composite, "connection_weights", "it multiplies weights and ignores "
                  "activations, so there is nothing for rules to change")
    check_inputs(inputs)
    check_class_target(target)
    modules = dict(model.named_modules())
    unsupported = [f"{name!r} ({type(modules[name]).__name__})"
                   for name in execution_order(model, inputs)
                   if not isinstance(modules[name], _DENSE_MODULES)]
    if unsupported:
        raise ValueError("connection_weights handles dense networks only (Linear layers, "
                         "activations, Flatten, Dropout); the model runs "
                         + ", ".join(unsupported))
    x = inputs.detach()
    with torch.no_grad():
        output = classifier_output(run_model(model, x))
    t = resolve_target(target, output)
    sample = x[:1].clone().requires_grad_(True)
    skipped = Composite(GlobalTypeMap([(_ACTIVATIONS, _StraightThrough())]),
                        name="ConnectionWeights")
    with skipped.bind(model, sample).scope, torch.enable_grad():
        linear = run_model(model, sample)
    if linear.grad_fn is None:
        raise ValueError("the model output does not depend on its input")
    ops = sorted({op_name(node) for node in graph_nodes(linear.grad_fn, lambda n: False)
                  if "AccumulateGrad" not in node.name()} - _DENSE_OPS)
    if ops:
        raise ValueError("connection_weights handles dense networks only; the forward "
                         f"computes {', '.join(ops)} outside dense layers and activations")
    classes = t.unique().tolist()
    rows = {}
    for k, c in enumerate(classes):
        (grad,) = torch.autograd.grad(linear[0, c], sample, retain_graph=k < len(classes) - 1,
                                      allow_unused=True)
        rows[c] = grad[0] if grad is not None else torch.zeros_like(sample[0])
    weights = torch.stack([rows[c] for c in t.flatten().tolist()]).reshape(
        t.shape + x.shape[1:])
    relevance = weights * layout(x, t) if times_input else weights
    return Explanation(relevance, output, t, "ConnectionWeights")


__all__ = [
    "IG_METHODS",
    "SMOOTHGRAD_MODES",
    "connection_weights",
    "expected_gradients",
    "gradient",
    "gradient_x_input",
    "integrated_gradients",
    "occlusion",
    "quadrature",
    "smoothgrad",
]
