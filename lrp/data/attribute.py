"""Explain a whole dataset into a store: :func:`attribute_dataset`.

Any attribution method of ``lrp`` runs batch by batch over a map-style dataset, in
one process or on every rank of a ``torch.distributed`` job, and the relevance of
every sample is written by dataset index into a store (:mod:`lrp.data.store`) that
survives interruption: a killed run resumes at the first chunk that was not
finished and ends with the same store as an uninterrupted run.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..batching import positive_int
from ..composites import Composite
from ..explanation import Explanation
from .distributed import Group
from .reading import AttributionStore
from .run import make_key, run_chunks
from .source import Source
from .store import Store

#: Method names of :func:`attribute_dataset` besides an LRP composite.
METHODS = ("gradient", "gradient_x_input", "smoothgrad", "integrated_gradients",
           "expected_gradients", "occlusion", "deeplift", "deeplift_shap", "lime", "kernel_shap")
#: Methods that draw random numbers: their ``seed`` (default 0) is offset per batch.
RANDOM = ("smoothgrad", "expected_gradients", "lime", "kernel_shap")
#: Methods whose function takes ``audit`` (warnings on the first batch only).
_AUDITED = ("lrp", "crp", "deeplift", "deeplift_shap")
_FORMAT = 1

Method = Union[None, Composite, str]


def method_function(name: str) -> Callable[..., Explanation]:
    """The library function of a method of :data:`METHODS`."""
    from .. import deeplift, gradients
    if name in ("deeplift", "deeplift_shap"):
        return getattr(deeplift, name)
    if name == "lime":
        from ..lime import lime
        return lime
    if name == "kernel_shap":
        from ..kernel_shap import kernel_shap
        return kernel_shap
    return getattr(gradients, name)


def _describe(value: Any, model: nn.Module, first: Tensor) -> Any:
    """A JSON description of an option value for the store key (tensors hashed)."""
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        digest = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
        return {"tensor": digest[:20], "dtype": str(t.dtype), "shape": list(t.shape)}
    if isinstance(value, Composite):
        return {"composite": value.tree(model, first), "attribution": value.attribution}
    if isinstance(value, (list, tuple)):
        return [_describe(v, model, first) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _describe(v, model, first) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _conditions(conditions: Sequence, target) -> list:
    """Parsed conditions; ``target`` fills in those without their own."""
    from ..crp.conditions import Condition, parse_conditions
    parsed = parse_conditions(conditions)
    return [Condition(c.concepts, target if c.target is None else c.target) for c in parsed]


def attribute_dataset(model: nn.Module, dataset, method: Method, store: str | Path, *,
                      target: None | int | str = None, conditions: Optional[Sequence] = None,
                      options: Optional[Mapping[str, Any]] = None,
                      batch_size: Optional[int] = None, workers: Optional[int] = None,
                      checkpoint_every: int = 10, dtype: Optional[torch.dtype] = None,
                      data_key: Optional[str] = None, overwrite: bool = False,
                      progress: Optional[bool] = None) -> AttributionStore:
    """Explain every sample of a dataset into a store, resumably, on any number of ranks.

    Runs in one process, or unchanged on every rank of an initialised
    ``torch.distributed`` process group (``torchrun``): each rank explains its share
    of the dataset's chunks and writes them into the store by dataset index.  Batches
    are cut from fixed chunks of ``batch_size * checkpoint_every`` samples, so the
    store does not depend on the number of processes; each finished chunk is a
    checkpoint.  A store that is complete is returned without recomputation.

    Parameters
    ----------
    model
        The model, in eval mode, on the device to compute on; left unchanged.
    dataset
        A map-style dataset (items: inputs or ``(input, label)``) or a DataLoader
        that does not shuffle (its ``batch_size``, ``num_workers``, ``collate_fn``
        are used unless given here).
    method
        A composite (LRP through :func:`lrp.explain`; with ``conditions``, CRP
        through :func:`lrp.crp.attribute`), ``None`` (gradient x input), or one of
        :data:`METHODS`: ``"gradient"``, ``"gradient_x_input"``, ``"smoothgrad"``,
        ``"integrated_gradients"``, ``"expected_gradients"``, ``"occlusion"``
        (:mod:`lrp.gradients`), ``"deeplift"``, ``"deeplift_shap"``
        (:mod:`lrp.deeplift`).
    store
        The store directory.  A store there written with other model weights,
        rules, settings or data is refused (:class:`lrp.data.StoreMismatch`)
        unless ``overwrite``.
    target
        The explained class: ``None`` (the predicted one), an int, or ``"label"``
        (the dataset's labels).  For CRP it applies to conditions without ``"y"``.
    conditions
        CRP conditions (see :func:`lrp.crp.attribute`); needs a composite.
    options
        Keyword arguments of the method, e.g. ``{"n": 32, "seed": 0}`` for SmoothGrad,
        ``{"background": x_ref}`` for Expected Gradients, ``{"output_relevance":
        "normalized"}`` for LRP.  Random methods get ``seed + (first dataset index of
        the batch)`` (``seed`` defaults to 0), so each batch draws the same numbers
        in every run.
    batch_size, workers
        Samples per batch (default 64 or the loader's) and DataLoader worker
        processes (default 0 or the loader's).
    checkpoint_every
        Batches per chunk (a checkpoint), used when the store is created.
    dtype
        Store the relevance in this dtype (default: as computed).
    data_key
        A string identifying the data; by default the data are hashed (one pass
        without the model, shared by the ranks).
    overwrite
        Replace a store written with other settings.
    progress
        Progress bar with samples/s (``None``: in a terminal; rank 0 only).

    Returns
    -------
    AttributionStore
        The finished store (on every rank): ``relevance``, ``output``, ``target``,
        ``label`` (when the dataset has labels) and ``convergence`` (DeepLift,
        Integrated and Expected Gradients) by dataset index; ``computed`` is the
        number of samples this call explained (the rest came from an earlier run).
    """
    source = Source.of(dataset, batch_size, workers)
    checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
    if not (target is None or target == "label" or (isinstance(target, int)
                                                    and not isinstance(target, bool))):
        raise ValueError(f"target must be None, 'label' or an int, got {target!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    options = dict(options or {})
    if isinstance(method, Composite) or method is None:
        kind = "crp" if conditions is not None else "lrp"
        if kind == "crp" and method is None:
            raise ValueError("CRP conditions need a composite")
    elif isinstance(method, str) and method in METHODS:
        kind = method
        if conditions is not None:
            raise ValueError(f"conditions are for CRP (a composite), not {method!r}")
    else:
        raise ValueError(f"method must be a composite, None or one of {', '.join(METHODS)}; "
                         f"got {method!r}")
    if kind in RANDOM:
        seed = options.setdefault("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"give {kind} an int seed (each batch uses seed + its first "
                            f"index, so that runs and resumed runs agree), got {seed!r}")
    for reserved in ("target", "progress", "audit"):
        if reserved in options:
            raise ValueError(f"options must not set {reserved!r}: it is an argument of "
                             "attribute_dataset or set per batch")
    conds = _conditions(conditions, None) if kind == "crp" else None

    group = Group.current()
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), None)
    first, _ = source.first()
    first = first.to(device) if device is not None else first
    settings = {
        "kind": "attribution", "method": kind, "target": target,
        "options": _describe(options, model, first),
        "rules": _describe(method, model, first) if isinstance(method, Composite) else None,
        "conditions": None if conds is None else [
            {"concepts": {k: list(v) for k, v in c.concepts.items()},
             "target": _describe(c.target, model, first)} for c in conds],
        "dtype": None if dtype is None else str(dtype), "format": _FORMAT,
    }
    key = make_key(settings, model, source, group, data_key=data_key, progress=progress)
    opened = Store.prepare(store, "attribution", key, len(source),
                           checkpoint_every * source.batch_size, group, overwrite)
    if opened.complete:
        return AttributionStore(opened.path, computed=0)

    started = [False]

    def process(writer, start: int, x: Tensor, y: Optional[Tensor]) -> None:
        x = x.to(device) if device is not None else x
        if target == "label" and y is None:
            raise ValueError("target='label' needs a dataset of (input, label) pairs")
        t = y.to(x.device) if target == "label" else target
        kwargs = dict(options)
        if kind in _AUDITED:
            kwargs["audit"] = "warn" if group.rank == 0 and not started[0] else "off"
        started[0] = True
        if kind == "lrp":
            from .. import explain
            e = explain(model, x, method, t, **kwargs)  # type: ignore[arg-type]
        elif kind == "crp":
            from ..crp import attribute
            e = attribute(model, x, method, _conditions(conds, t), progress=False,  # type: ignore
                          **kwargs)
        else:
            if kind in RANDOM:
                kwargs["seed"] = options["seed"] + start
            if kind in ("smoothgrad", "integrated_gradients", "expected_gradients",
                        "occlusion", "deeplift_shap"):
                kwargs["progress"] = False
            e = method_function(kind)(model, x, target=t, **kwargs)
        relevance = e.relevance.detach()
        writer.rows("relevance", start, relevance.to(dtype or relevance.dtype).cpu().numpy())
        writer.rows("output", start, e.output.detach().cpu().numpy())
        if e.target is not None:
            writer.rows("target", start, e.target.detach().cpu().numpy())
        if y is not None:
            writer.rows("label", start, y.detach().cpu().numpy())
        if e.convergence is not None:
            writer.rows("convergence", start, e.convergence.detach().cpu().numpy())

    computed = run_chunks(opened, source, group, process, progress=progress, desc="attribution")
    error = None
    if group.rank == 0:
        try:
            opened.finish(arrays=_arrays(opened))
        except Exception as err:  # reported to every rank by check()
            error = err
    group.check(error, "finishing the store")
    return AttributionStore(opened.path, computed=computed)


def _arrays(store: Store) -> dict[str, dict[str, Any]]:
    """Name -> dtype and per-sample shape of the store's arrays (for the manifest)."""
    first = store.done()[0]
    out = {}
    for name in store.names():
        a = store.read(first, name)
        out[name] = {"dtype": str(a.dtype), "shape": [int(s) for s in a.shape[1:]]}
    return out
