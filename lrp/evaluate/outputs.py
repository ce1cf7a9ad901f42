"""The explained model output of many perturbed copies, in bounded no-grad chunks."""
from __future__ import annotations

from typing import Callable, Tuple

from torch import Tensor, nn

from ..batching import model_outputs, positive_int, run_chunked
from ..targets import Target, check_inputs, resolve_target


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


def perturbed_scores(model: nn.Module, make_pass: Callable[[int], Tensor], n_passes: int,
                     t: Tensor, *, softmax: bool, batch_size: int, progress, desc: str,
                     predicted: bool = False) -> Tensor:
    """``(batch, n_passes)``: the explained output of pass ``p = make_pass(p)`` for each
    sample (with ``predicted=True``: whether the prediction is still the target).

    The rows of all passes go through the model pass-major in no-grad chunks of at most
    ``batch_size`` (:func:`lrp.batching.run_chunked`), with a progress bar.
    """
    values: list = [None]

    def evaluate(rows: Tensor, targets: Tensor) -> Tensor:
        output = model_outputs(model, rows, rows.shape[0])
        if predicted:
            return (output.argmax(dim=1) == targets).to(output.dtype)
        return score(output, targets, softmax)

    def consume(p: int, a: int, b: int, v: Tensor) -> None:
        if values[0] is None:  # dtype and device of the model's output
            values[0] = v.new_empty((t.shape[0], n_passes))
        values[0][a:b, p] = v

    run_chunked(make_pass, n_passes, t, evaluate, consume, batch_size, progress, desc)
    return values[0]
