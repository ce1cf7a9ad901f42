"""DeepLift and DeepLiftShap (Shrikumar et al. 2017) on the propagation engine.

DeepLift explains the difference of the output from its value at a reference input,
``f(x) - f(x_ref)``, by contributions ``C_i`` of the input features that add up to
it exactly (*summation-to-delta*).  It backpropagates multipliers ``m = Δy / Δx``
with the chain rule; for linear operations (linear, convolution, batch norm in eval
mode, average pooling, reshapes, residual sums) they are the ordinary gradient, so
only the non-linear modules get a rule (:mod:`lrp.deeplift_rules`):

* **Rescale** (``rule="rescale"``): at an element-wise activation
  ``m = (f(x) - f(x0)) / (x - x0)``; where ``|x - x0|`` is near zero the derivative
  at the midpoint (the secant's limit), so results are never NaN.
* **RevealCancel** (``rule="reveal_cancel"``): the positive and negative terms
  ``w_i Δx_i`` of each weighted layer are summed separately,
  ``Δz+ = W+ Δx+ + W- Δx-`` and ``Δz- = W- Δx+ + W+ Δx-`` with ``Δx+`` / ``Δx-``
  the positive / negative parts of the layer input's difference; an activation maps
  them to ``Δy+ = 1/2 (f(x0 + Δz+) - f(x0)) + 1/2 (f(x) - f(x0 + Δz-))`` and
  ``Δy-`` likewise, with multipliers ``Δy+ / Δz+`` and ``Δy- / Δz-`` (their limits
  where a part vanishes), and its output difference ``Δy+ + Δy-`` is split by sign
  again for the next layer.  Where ``Δx_i = 0`` the multipliers are ``0.5 w_i``
  (the paper's choice: the parts of ``Δx_i`` may cancel).
* **Max pooling** (both rules), exact: in each window ``Δy = max(x) - max(x0)`` is
  split between the input's winner ``a`` and the reference's winner ``b`` with
  weights ``lam`` and ``1 - lam`` in ``[0, 1]`` such that
  ``lam Δx_a + (1 - lam) Δx_b = Δy``.  Where the winners coincide (most windows
  when ``x`` is near ``x_ref``) it is the ordinary gradient.

Cost of Rescale: a forward of the reference without gradients (one sample for a
shared reference), then one forward and one backward, as a gradient pass.

Every function returns an :class:`lrp.Explanation` whose ``convergence`` is the
summation-to-delta error ``sum(C) - (f(x) - f(x_ref))`` per sample (and target).
Non-linear operations that are not modules (``torch.relu`` in a ``forward``,
softmax, products of activations) have no rule; the coverage audit reports them,
since summation-to-delta does not hold through them.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attach import bind_rules, classifier_output, run_model
from .audit import AuditReport, CoverageError
from .core import Trace, tracing
from .deeplift_rules import (RULES, DeepLiftAuditor, DeepLiftOps, DeepLiftState, activated,
                             check_streams, record_call, rules_for, uncovered_message)
from .batching import RowSums, model_outputs, positive_int, show_progress
from .explanation import Explanation
from .gradients import _baseline, _check_background, _session
from .explain import final_softmax
from .scope import Scope, Substitution
from .targets import (Target, check_class_target, check_inputs, output_seeds, pick,
                      resolve_target, target_sums)

Reference = Union[None, float, Tensor]

_AUDIT_MODES = ("warn", "strict", "off")


@dataclass
class _Pass:
    relevance: Tensor
    output: Tensor
    target: Tensor
    reference_output: Tensor  # f(x_ref) of the g reference rows
    audit: Optional[AuditReport]


def _handle_audit(report: AuditReport, mode: str) -> None:
    if not report.uncovered or mode == "off":
        return
    message = uncovered_message(report)
    if mode == "strict":
        raise CoverageError(message)
    warnings.warn(message, stacklevel=4)


def _check_options(rule: str, audit: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if audit not in _AUDIT_MODES:
        raise ValueError(f"audit must be one of {_AUDIT_MODES}, got {audit!r}")


def _deeplift_pass(model: nn.Module, rows: Tensor, refs: Tensor, rule: str,
                   resolve: Callable[[Tensor], Tensor], audit: str,
                   strip_softmax: bool = False) -> _Pass:
    """DeepLift of ``rows`` (``g * n`` inputs) against ``refs`` (``g`` references;
    row ``i`` pairs with reference ``i // n``).  ``resolve(output)`` gives the targets."""
    groups = refs.shape[0]
    names = {m: name for name, m in model.named_modules()}
    state = DeepLiftState(groups, dict(names))
    modules = dict(model.named_modules())
    last = final_softmax(model, rows) if strip_softmax else None
    scope = Scope(model, rules=bind_rules(modules, rules_for(model, rule)),
                  substitution=Substitution(identity={last} if last is not None else set()),
                  ops=DeepLiftOps(rule, names), observers=[record_call])
    delta = (state.grouped(rows) - refs.unsqueeze(1)).reshape(rows.shape)
    auditor = DeepLiftAuditor(model) if audit != "off" else None
    if auditor is not None:
        scope.observers.append(auditor.observe)
    report = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(scope)
        stack.enter_context(activated(state))
        state.phase = "reference"
        with torch.no_grad():
            ref_out = classifier_output(run_model(model, refs))
        if rule == "rescale":
            leaves: List[Tensor] = [rows.clone().requires_grad_(True)]
            stream = leaves[0]
        else:
            state.phase = "input"
            with torch.no_grad():
                output = classifier_output(run_model(model, rows))
            leaves = [delta.clamp(min=0).requires_grad_(True),
                      delta.clamp(max=0).requires_grad_(True)]
            stream = torch.cat(leaves)
        state.phase = "explain"
        trace = Trace(inputs=[stream])
        with torch.enable_grad(), tracing(trace):
            out = classifier_output(run_model(model, stream))
        state.check_consumed()
        ref_rows = ref_out.unsqueeze(1).expand(groups, rows.shape[0] // groups, -1) \
            .reshape(rows.shape[0], -1)
        if rule == "rescale":
            output = root = out
        else:
            top, bottom = out[:rows.shape[0]], out[rows.shape[0]:]
            check_streams("the model output", top.detach(), bottom.detach(), ref_rows, output)
            root = top + bottom
        if auditor is not None:
            report = auditor.report(root, trace.calls)
            _handle_audit(report, audit)
    t = resolve(output.detach())
    grads: List[List[Tensor]] = []
    seeds = output_seeds(output.detach(), None, t, False)
    for k, seed in enumerate(seeds):
        if root.requires_grad:
            found = torch.autograd.grad(root, leaves, seed, retain_graph=k < len(seeds) - 1,
                                        allow_unused=True)
        else:  # the output does not depend on the input
            found = (None,) * len(leaves)
        grads.append([torch.zeros_like(leaf) if g is None else g
                      for leaf, g in zip(leaves, found)])
    relevances = [sum(leaf.detach() * g for leaf, g in zip(leaves, gs)) if rule != "rescale"
                  else delta * gs[0] for gs in grads]
    relevance = torch.stack(relevances, 1) if t.dim() == 2 else relevances[0]
    return _Pass(relevance.detach(), output.detach(), t, ref_out.detach(), report)


def deeplift(model: nn.Module, inputs: Tensor, target: Target = None, *,
             reference: Reference = None, rule: str = "rescale",
             strip_softmax: bool = False, audit: str = "warn") -> Explanation:
    """DeepLift contributions to ``f(x) - f(x_ref)``.

    Parameters
    ----------
    model
        A model mapping ``(batch, ...)`` to ``(batch, classes)``, in eval mode.  Its
        non-linearities must be modules (``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh``,
        ``nn.Softplus``, ``nn.GELU``, ``nn.SiLU``, ``nn.ELU``, ``nn.LeakyReLU``,
        ``nn.ReLU6``, ``nn.Hardtanh``, ..., max pooling); it is left as it was.
    inputs
        The input batch (floating point, finite).
    target
        As in :func:`lrp.explain`: ``None`` (predicted class), an int, one class per
        sample, or a ``(batch, k)`` tensor of ``k`` classes per sample sharing one
        forward.
    reference
        ``x_ref``: ``None`` (zeros), a number, one sample (shape ``inputs.shape[1:]``
        or ``(1, ...)``) for all, or one per sample (``inputs.shape``).
    rule
        ``"rescale"`` or ``"reveal_cancel"`` (see :mod:`lrp.deeplift`).
        RevealCancel needs the operations between modules to be sums,
        concatenations, reshapes or average pooling (a :class:`ValueError` says
        where they are not) and costs about three times as much.
    strip_softmax
        Explain the logits when the model's last module is a softmax / log-softmax
        / sigmoid.
    audit
        ``"warn"`` (default), ``"strict"`` (raise :class:`lrp.audit.CoverageError`)
        or ``"off"``: report non-linear operations without a DeepLift rule
        (functional ``torch.relu``, softmax, ...).

    Returns
    -------
    Explanation
        ``relevance`` holds the contributions (input-shaped; ``(batch, k, ...)``
        for ``k`` targets per sample), ``convergence`` the summation-to-delta error
        ``sum(relevance) - (f(x) - f(x_ref))``.

    Examples
    --------
    >>> from lrp.deeplift import deeplift
    >>> from lrp.demo import load_demo_model, demo_inputs
    >>> model = load_demo_model()
    >>> x, labels = demo_inputs(4)
    >>> e = deeplift(model, x, labels)
    >>> bool(e.convergence.abs().max() < 1e-3)
    True
    """
    check_inputs(inputs)
    check_class_target(target)
    _check_options(rule, audit)
    x = inputs.detach()
    try:
        refs = _baseline(reference, x)
    except ValueError as err:  # same rules as a baseline; name it as the caller does
        raise ValueError(str(err).replace("baseline", "reference")) from None
    with _session(model, x, strip_softmax):
        result = _deeplift_pass(model, x, refs, rule, lambda out: resolve_target(target, out),
                                audit, strip_softmax)
    ref_out = result.reference_output.expand_as(result.output)
    convergence = target_sums(result.relevance, result.target) - (
        pick(result.output, result.target) - pick(ref_out, result.target))
    return Explanation(result.relevance, result.output, result.target, f"DeepLift({rule})",
                       audit=result.audit, convergence=convergence)


def deeplift_shap(model: nn.Module, inputs: Tensor, background: Tensor,
                  target: Target = None, *, rule: str = "rescale", batch_size: int = 64,
                  progress: Optional[bool] = None, strip_softmax: bool = False,
                  audit: str = "warn") -> Explanation:
    """DeepLiftShap: DeepLift averaged over the references in ``background``.

    ``R = 1/N sum_j deeplift(x, reference=background[j])``, the contributions to
    ``f(x) - 1/N sum_j f(background[j])``.

    Parameters
    ----------
    model, inputs, target, rule, strip_softmax, audit
        As in :func:`deeplift`.
    background
        Reference samples ``(N, ...)`` with ``inputs``' sample shape.
    batch_size
        At most this many (input, reference) pairs per forward (at least one
        reference with all samples, or a slice of the samples with one reference,
        per chunk).
    progress
        Show a tqdm progress bar over the chunks (default: when there is more than
        one and stderr is a terminal).

    Returns
    -------
    Explanation
        ``convergence`` is ``sum(R) - (f(x) - 1/N sum_j f(background[j]))``.
    """
    check_inputs(inputs)
    check_class_target(target)
    _check_options(rule, audit)
    batch_size = positive_int(batch_size, "batch_size")
    _check_background(background, inputs)
    x = inputs.detach()
    bg = background.detach().to(device=x.device, dtype=x.dtype)
    batch, count = x.shape[0], bg.shape[0]
    if batch <= batch_size:  # several whole references per chunk
        per = batch_size // batch
        chunks = [(j, min(j + per, count), 0, batch) for j in range(0, count, per)]
    else:  # one reference, a slice of the samples
        chunks = [(j, j + 1, a, min(a + batch_size, batch))
                  for j in range(count) for a in range(0, batch, batch_size)]
    with _session(model, x, strip_softmax):
        output = model_outputs(model, x, batch_size)
        t = resolve_target(target, output)
        total = RowSums(batch)
        ref_total = torch.zeros_like(output[0])
        mode = audit
        report = None
        with tqdm(total=len(chunks), desc=f"DeepLiftShap({rule})",
                  disable=not show_progress(progress, len(chunks))) as bar:
            for j0, j1, a, b in chunks:
                k = j1 - j0
                rows = x[a:b].repeat(k, *([1] * (x.dim() - 1)))
                t_rows = t[a:b].repeat(k, *([1] * (t.dim() - 1)))
                result = _deeplift_pass(model, rows, bg[j0:j1], rule,
                                        lambda out, t_rows=t_rows: t_rows, mode, strip_softmax)
                if mode != "off":
                    report, mode = result.audit, "off"
                total.add(a, b, result.relevance.reshape(k, b - a, *result.relevance.shape[1:])
                          .sum(0))
                if a == 0:
                    ref_total += result.reference_output.sum(0)
                bar.update(1)
    relevance = total.value / count
    reference = (ref_total / count).expand_as(output)
    convergence = target_sums(relevance, t) - (pick(output, t) - pick(reference, t))
    return Explanation(relevance, output, t, f"DeepLiftShap({rule})", audit=report,
                       convergence=convergence)


__all__ = ["deeplift", "deeplift_shap"]
