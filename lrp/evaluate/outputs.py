"""The explained model output of many perturbed copies, in bounded inference chunks."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..attach import classifier_output, run_model
from ..batching import model_outputs, positive_int, run_chunked
from ..targets import Target, check_inputs, resolve_target

#: What ``make_pass`` returns: the inputs, or the inputs and where they come from.
PassInputs = Union[Tensor, Tuple[Tensor, Tensor]]


def prepare(model: nn.Module, inputs: Tensor, target: Target, batch_size: int
            ) -> Tuple[Tensor, Tensor, Tensor, int]:
    """Detached inputs, their model output, one target class per sample, the batch size.

    Raises
    ------
    ValueError, TypeError
        For bad inputs, targets or batch size (one line each).
    """
    check_inputs(inputs)
    batch_size = positive_int(batch_size, "batch_size")
    if callable(target) and not isinstance(target, Tensor):
        raise TypeError("metrics need class indices as targets, not a target function")
    x = inputs.detach()
    output = model_outputs(model, x, batch_size)
    t = resolve_target(target, output)
    if t.dim() != 1:
        raise ValueError(f"metrics take one target class per sample, got targets of shape "
                         f"{tuple(t.shape)}")
    return x, output, t, batch_size


def score(output: Tensor, t: Tensor, softmax: bool) -> Tensor:
    """The explained output per row: the target logit, or its softmax probability."""
    if softmax:
        output = output.softmax(dim=1)
    return output.gather(1, t[:, None])[:, 0]


def unchanged(x: Tensor, values: Tensor) -> Tensor:
    """Where replacing ``x`` by ``values`` changes nothing: equal values with equal signs
    (``-0.0`` is not ``0.0``; NaN is never unchanged), so the input stays bit for bit."""
    return (x == values) & (torch.signbit(x) == torch.signbit(values))


def perturbed_scores(model: nn.Module, make_pass: Callable[[int], PassInputs], n_passes: int,
                     t: Tensor, *, softmax: bool, batch_size: int, progress, desc: str,
                     predicted: bool = False, start: Optional[Tensor] = None) -> Tensor:
    """``(batch, n_passes)``: the explained output of pass ``p = make_pass(p)`` for each
    sample (with ``predicted=True``: whether the prediction is still the target).

    ``make_pass(p)`` returns the inputs of pass ``p``, or ``(inputs, source)``: for each
    sample, ``source = p`` if its input is new, or the earlier pass ``q < p`` whose input
    it equals bit for bit (``-1``: the unperturbed input, whose value is ``start``).
    Those samples are not run again: they get the value of pass ``q``, which is what the
    model returns for the same input (up to the float rounding a different batch may
    bring).  The new rows of all passes go through the model pass-major in inference
    chunks of at most ``batch_size`` (:func:`lrp.batching.run_chunked`), with a progress
    bar.
    """
    batch = t.shape[0]
    values: list = [None if start is None else start.new_empty((batch, n_passes))]
    sources: Dict[int, Tensor] = {}
    subsets: Dict[int, Tensor] = {}

    def make_new(p: int):
        made = make_pass(p)
        if isinstance(made, Tensor):
            return made
        inputs, source = made
        if start is None:
            raise ValueError("passes that reuse earlier values need the unperturbed value `start`")
        new = source == p
        if bool(new.all()):
            return inputs
        sources[p] = source
        subsets[p] = new.nonzero()[:, 0]
        return inputs[subsets[p]], subsets[p]

    def evaluate(rows: Tensor, targets: Tensor) -> Tensor:
        with torch.inference_mode():
            output = classifier_output(run_model(model, rows))
            if predicted:
                return (output.argmax(dim=1) == targets).to(output.dtype)
            return score(output, targets, softmax)

    def consume(p: int, a: int, b: int, v: Tensor) -> None:
        if values[0] is None:  # dtype and device of the model's output (not an inference tensor)
            values[0] = torch.empty((batch, n_passes), dtype=v.dtype, device=v.device)
        rows = subsets[p][a:b] if p in subsets else slice(a, b)
        values[0][rows, p] = v

    run_chunked(make_new, n_passes, t, evaluate, consume, batch_size, progress, desc)
    out = values[0]
    for p, source in sources.items():  # in pass order: earlier values are final
        old = (source != p).nonzero()[:, 0]
        q = source[old]
        out[old, p] = torch.where(q < 0, start[old].to(out.dtype), out[old, q.clamp(min=0)])
    return out
