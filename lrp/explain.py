"""The entry point of LRP: :func:`explain`."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .attach import check_model, classifier_output, run_model, select_output
from .audit import AuditReport, Auditor, handle_report
from .composites import Attachment, Composite
from .core import Trace, mark_rectified, tracing
from .probe import execution_order
from .explanation import Explanation
from .targets import Target, check_inputs, output_seeds, resolve_target

_SOFTMAX_LIKE = (nn.Softmax, nn.LogSoftmax, nn.Sigmoid)


def bind(composite: Composite, model: nn.Module, x, *, strip_softmax: bool = False,
         audit: str = "off", model_kwargs: Optional[dict] = None
         ) -> Tuple[Attachment, Optional[Auditor]]:
    """Check the model, bind ``composite`` to it for the input ``x`` and add what every
    method's forward needs: the final softmax stripped if asked for, and an auditor
    stamping the graph when ``audit`` is on."""
    check_model(model)
    attachment = composite.bind(model, x, model_kwargs)
    if strip_softmax:
        last = final_softmax(model, x, model_kwargs)
        if last is not None:
            attachment.substitution.identity.add(last)
    auditor = None
    if audit != "off":
        auditor = Auditor(model, attachment.substitution.virtual)
        attachment.scope.observers.append(auditor.observe)
    return attachment, auditor


def final_softmax(model: nn.Module, x, model_kwargs: Optional[dict] = None
                  ) -> Optional[nn.Module]:
    """The model's last executed module if it is a softmax / log-softmax / sigmoid."""
    order = execution_order(model, x, model_kwargs)
    last = dict(model.named_modules()).get(order[-1]) if order else None
    return last if isinstance(last, _SOFTMAX_LIKE) else None


def _finish_forward(output: Tensor, trace: Trace, auditor: Optional[Auditor],
                    attachment: Attachment, audit: str) -> Optional[AuditReport]:
    """After the forward: refuse a composite that applied no rule at all (while it has
    module primitives: they do not fit the model), flag the rectified rule nodes (one
    walk over the graph, when a rule uses the flag) and, with an ``auditor``, report
    the operations no rule covers as ``audit`` says."""
    composite = attachment.composite
    passive = any(r.passive for r in (attachment.mapping or {}).values())
    if not trace.fired and not passive and len(composite.op_maps) < len(composite.primitives):
        raise ValueError(f"{composite.name} assigns no rule to any module or operation of "
                         f"{type(attachment.model).__name__}")
    if output.grad_fn is not None and trace.rectified:
        mark_rectified(output.grad_fn)
    if auditor is None:
        return None
    report = auditor.report(output, trace.calls, attachment.mapping or {})
    handle_report(report, audit)
    return report


def explain(
    model: nn.Module,
    inputs: Tensor,
    composite: Optional[Composite] = None,
    target: Target = None,
    *,
    output_relevance: str = "logit",
    strip_softmax: bool = False,
    audit: str = "warn",
    record: Sequence[str] = (),
    layer_sums: bool = False,
    model_kwargs: Optional[dict] = None,
    output: Union[None, str, Callable] = None,
) -> Explanation:
    """Explain ``model(inputs)`` with a composite of LRP rules.

    Parameters
    ----------
    model
        A PyTorch model mapping ``(batch, ...)`` to ``(batch, classes)``; put it in
        eval mode.  It is left exactly as it was.
    inputs
        The input batch (floating point, finite).
    composite
        The rules (e.g. :func:`lrp.composites.EpsilonGammaBox`); ``None`` gives
        gradient x input (LRP-0 on ReLU networks).
    target
        ``None``: the predicted class of each sample.  An int: that class for all.
        A sequence/1-D tensor: one class per sample.  A ``(batch, k)`` tensor: ``k``
        classes per sample, sharing one forward.  A callable ``f(output) ->
        relevance`` (output-shaped) for a custom output relevance.
    output_relevance
        ``"logit"``: the explained output carries its value, so ``sum(R) ~ f(x)``.
        ``"normalized"``: it carries 1, so ``sum(R) ~ 1``.
    strip_softmax
        Explain the logits when the model's last module is a softmax / log-softmax
        / sigmoid (innsight's ``ignore_last_act``).
    audit
        ``"warn"`` (default), ``"strict"`` (raise :class:`lrp.audit.CoverageError`)
        or ``"off"``: report non-linear operations no rule covers.
    record
        Names of modules whose output relevance is returned in
        ``Explanation.layer_relevance`` (modules must have a rule).
    layer_sums
        Also return the per-sample relevance sum at every ruled layer's output.
    model_kwargs
        Keyword arguments for the model (``model(inputs, **model_kwargs)``), e.g. an
        attention mask; tensors with the batch as first dimension are sliced with it.
        A value :data:`lrp.attach.INPUT` passes the inputs as that keyword instead
        (``{"inputs_embeds": INPUT}``).
    output
        What to explain of the model's output: ``None`` takes a tensor as it is, the
        ``logits`` of a dict or Hugging Face ``ModelOutput``, and the first element
        of a tuple; a string names a key / attribute; a callable selects, e.g.
        ``lambda out: out.logits[:, -1]`` (the last position of a language model).
        The selected tensor must be ``(batch, classes)``.

    Returns
    -------
    Explanation
    """
    check_inputs(inputs)
    if output_relevance not in ("logit", "normalized"):
        raise ValueError("output_relevance must be 'logit' or 'normalized'")
    if audit not in ("warn", "strict", "off"):
        raise ValueError("audit must be 'warn', 'strict' or 'off'")
    composite = composite if composite is not None else Composite(name="GradientXInput")
    selector, output = output, None
    x = inputs.detach().clone().requires_grad_(True)
    records: Dict[str, List[Tensor]] = {}
    trace = Trace(inputs=[x], audited=audit != "off")
    wanted = set(record)
    if wanted or layer_sums:
        def recorder(name: str):
            if name in wanted:
                return records.setdefault(name, []).append
            if layer_sums:
                return lambda r: records.setdefault(name, []).append(
                    r.flatten(1).sum(dim=1))
            return None
        trace.record = recorder

    attachment, auditor = bind(composite, model, x, strip_softmax=strip_softmax, audit=audit,
                               model_kwargs=model_kwargs)
    missing = wanted - set(attachment.mapping or {})
    if missing:
        raise ValueError(f"cannot record {sorted(missing)}: no rule is attached there")
    with attachment.scope, torch.enable_grad(), tracing(trace):
        output = classifier_output(select_output(run_model(model, x, kwargs=model_kwargs),
                                                 selector))
    report = _finish_forward(output, trace, auditor, attachment, audit)
    t = resolve_target(target, output)
    seeds = output_seeds(output, target, t, output_relevance == "normalized")
    relevances = []
    for k, seed in enumerate(seeds):
        trace.reset_grads()
        leaves = [x] + [leaf for _, ls in trace.sinks for leaf in ls]
        if output.requires_grad:
            grads = torch.autograd.grad(output, leaves, seed, retain_graph=k < len(seeds) - 1,
                                        allow_unused=True)
        else:  # the output does not depend on the input
            grads = (None,) * len(leaves)
        for leaf, g in zip(leaves, grads):
            leaf.grad = g
        if composite.attribution == "gradient":
            if trace.sinks:
                raise ValueError(
                    f"{composite.name}: a rule at the input (Flat, WSquare or ZBox) "
                    "returns relevance, not a modified gradient; use it with "
                    "attribution='relevance'")
            relevances.append(x.grad if x.grad is not None else torch.zeros_like(x))
        else:
            relevances.append(trace.input_relevance(x))
    multi = t is not None and t.dim() == 2
    relevance = torch.stack(relevances, 1) if multi else relevances[0]
    layer_rel = {}
    sums = {}
    for name, values in records.items():
        stacked = torch.stack(values, 1) if multi else values[0]
        (layer_rel if name in wanted else sums)[name] = stacked.detach()
    return Explanation(relevance.detach(), output.detach(), t, composite.name,
                       layer_rel, sums, report)
