"""Many model evaluations in bounded chunks, with progress bars and explicit randomness.

Methods that evaluate the model on many inputs per sample (SmoothGrad, Integrated
Gradients, DeepLiftShap, occlusion, perturbation metrics, LIME, Kernel SHAP) stream
them through the model in chunks of at most ``batch_size`` rows with
:func:`run_chunked`, show a tqdm bar when there is more than one chunk and stderr is
a terminal (:func:`show_progress`), and draw random numbers from an explicit
``torch.Generator`` (:func:`make_generator`).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Callable, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attach import classifier_output, run_model

Seed = Union[None, int, torch.Generator]


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def make_generator(seed: Seed) -> torch.Generator | None:
    """A ``torch.Generator`` from an int seed (a generator or ``None`` is returned as is)."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def randn_like(shape, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Standard normal noise of ``shape`` from ``generator`` (on its device), moved to
    ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def rand_like(shape, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Uniform ``[0, 1)`` noise of ``shape`` from ``generator`` (on its device), moved to
    ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def per_sample(values: Tensor, x: Tensor) -> Tensor:
    """One value per sample ``(batch,)``, shaped to broadcast against ``x``."""
    return values.reshape((-1,) + (1,) * (x.dim() - 1))


def model_outputs(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """``model(x)`` without gradients, in chunks of ``batch_size``."""
    outs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            outs.append(classifier_output(run_model(model, x[start:start + batch_size])))
    return torch.cat(outs)


def show_progress(progress: bool | None, chunks: int) -> bool:
    """Whether to show a progress bar (``None``: several chunks and stderr is a terminal)."""
    if progress is None:
        return chunks > 1 and sys.stderr.isatty()
    return bool(progress)


class RowSums:
    """Per-sample sums of values that arrive for row ranges ``a:b`` of a batch; the
    buffer is made with the first value, when its trailing shape is known."""

    def __init__(self, batch: int):
        self.batch = batch
        self._total: Tensor | None = None

    def add(self, a: int, b: int, values: Tensor) -> None:
        if self._total is None:
            self._total = values.new_zeros((self.batch,) + values.shape[1:])
        self._total[a:b] += values

    @property
    def value(self) -> Tensor:
        assert self._total is not None, "no values were added"
        return self._total


def run_chunked(make_pass: Callable[[int], Tensor], n_passes: int, t: Tensor,
         evaluate: Callable[[Tensor, Tensor], Tensor],
         consume: Callable[[int, int, int, Tensor], None],
         batch_size: int, progress: bool | None, desc: str) -> None:
    """Evaluate ``n_passes`` model inputs of shape ``(batch, ...)`` in chunks.

    ``make_pass(p)`` builds pass ``p`` (called once per pass, in order); the rows of
    all passes are streamed pass-major into chunks of at most ``batch_size`` rows,
    ``evaluate(rows, targets)`` runs on each chunk and ``consume(p, start, stop,
    values)`` receives the values of samples ``start:stop`` of pass ``p``.
    """
    batch = t.shape[0]
    chunks = math.ceil(n_passes * batch / batch_size)
    with tqdm(total=chunks, desc=desc, disable=not show_progress(progress, chunks)) as bar:
        for rows, segments in _chunks(make_pass, n_passes, batch, batch_size):
            values = evaluate(rows, torch.cat([t[a:b] for _, a, b in segments]))
            offset = 0
            for p, a, b in segments:
                consume(p, a, b, values[offset:offset + b - a])
                offset += b - a
            bar.update(1)


def _chunks(make_pass: Callable[[int], Tensor], n_passes: int, batch: int,
            batch_size: int) -> Iterator[tuple[Tensor, list[tuple[int, int, int]]]]:
    pieces: list[Tensor] = []
    segments: list[tuple[int, int, int]] = []
    rows = 0
    for p in range(n_passes):
        inputs = make_pass(p)
        start = 0
        while start < batch:
            stop = min(batch, start + batch_size - rows)
            pieces.append(inputs[start:stop])
            segments.append((p, start, stop))
            rows += stop - start
            start = stop
            if rows == batch_size:
                yield torch.cat(pieces), segments
                pieces, segments, rows = [], [], 0
    if pieces:
        yield torch.cat(pieces), segments
