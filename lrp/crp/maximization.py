"""Relevance and activation maximization: reference samples of every concept.

:func:`collect_references` runs a model over a dataset and keeps, for each concept of
the chosen layers, the ``n`` samples with the highest concept relevance (relevance
maximization, Achtibat et al. 2023) and the ``n`` with the highest activation
(activation maximization).  Each batch costs one forward and one backward pass from
the output to the lowest chosen layer.  It runs in one process or on every rank of a
``torch.distributed`` job (each rank takes its chunks of the dataset; the top-``n``
lists are merged exactly), and writes its progress to a store
(:mod:`lrp.data.store`) keyed by a hash of the model's parameters, the rules, the
data and the settings: a killed run resumes, a finished one is loaded instead of
recomputed.

:func:`reference_samples` fetches the references of one concept from the dataset,
with their conditional heatmaps, cropped to the concept's most relevant region.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..batching import positive_int
from ..composites import Composite, ModelLayers, Primitive
from ..data.distributed import Group, shard
from ..data.run import Layout, make_key, run_chunks
from ..data.source import Source, split_batch
from ..data.store import Store
from ..layers import is_weighted
from .attribution import Concepts, concept_of
from .engine import capture, check_layers

MODES = ("relevance", "activation")
_FORMAT = 2
#: The merged result inside a reference store.
RESULT = "references.npz"


@dataclass
class References:
    """Top-``n`` reference samples of every concept of some layers.

    Attributes
    ----------
    layers
        The layers.
    n
        Samples kept per concept.
    values
        ``values[mode][layer]``: ``(n_concepts, n)`` concept relevance (mode
        ``"relevance"``) or activation (``"activation"``) of the references, highest
        first, ties by the lower dataset index (``-inf`` where the dataset had fewer
        samples); in the dtype the model computes in.
    indices
        ``indices[mode][layer]``: ``(n_concepts, n)`` dataset indices (``-1`` where
        missing).
    targets
        ``targets[mode][layer]``: ``(n_concepts, n)`` the class explained for each
        reference.
    settings
        What the result depends on (hashed into :attr:`key`).
    key
        The store key.
    path
        The result file inside the store (``references.npz``), or ``None``.
    loaded
        Whether the result was read from a finished store instead of computed.
    computed
        Samples computed by the call that returned this result (the rest, if any,
        came from an earlier, interrupted run).
    """

    layers: tuple[str, ...]
    n: int
    values: dict[str, dict[str, Tensor]]
    indices: dict[str, dict[str, Tensor]]
    targets: dict[str, dict[str, Tensor]]
    settings: dict[str, object]
    key: str
    path: Path | None = None
    loaded: bool = False
    computed: int = 0

    def top(self, layer: str, concept: int, mode: str = "relevance") -> tuple[Tensor, Tensor]:
        """Dataset indices and values of the references of one concept (missing ones dropped)."""
        _check_mode(mode)
        if layer not in self.layers:
            raise ValueError(f"no references for layer {layer!r}; collected: {list(self.layers)}")
        idx = self.indices[mode][layer]
        if not 0 <= concept < idx.shape[0]:
            raise ValueError(f"concept {concept} out of range for layer {layer!r} "
                             f"({idx.shape[0]} concepts)")
        keep = idx[concept] >= 0
        return idx[concept][keep], self.values[mode][layer][concept][keep]

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (``.npz``, atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"meta": np.array(json.dumps({"layers": list(self.layers), "n": self.n,
                                               "settings": self.settings, "key": self.key,
                                               "format": _FORMAT}))}
        for mode in MODES:
            for i, layer in enumerate(self.layers):
                arrays[f"{mode}_{i}_values"] = self.values[mode][layer].numpy()
                arrays[f"{mode}_{i}_indices"] = self.indices[mode][layer].numpy()
                arrays[f"{mode}_{i}_targets"] = self.targets[mode][layer].numpy()
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> References:
        """Read a file written by :meth:`save`, or the result of a reference store
        (a directory written by :func:`collect_references`)."""
        path = Path(path)
        if path.is_dir():
            store = Store.open(path, "references")
            if not store.complete:
                raise ValueError(f"{path} is incomplete: run collect_references again with the "
                                 "same settings to resume it")
            path = path / RESULT
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{path} has an unknown format")
            layers = tuple(meta["layers"])
            values, indices, targets = ({m: {} for m in MODES} for _ in range(3))
            for mode in MODES:
                for i, layer in enumerate(layers):
                    values[mode][layer] = torch.from_numpy(data[f"{mode}_{i}_values"])
                    indices[mode][layer] = torch.from_numpy(data[f"{mode}_{i}_indices"])
                    targets[mode][layer] = torch.from_numpy(data[f"{mode}_{i}_targets"])
        return cls(layers, int(meta["n"]), values, indices, targets, meta["settings"],
                   meta["key"], Path(path), True)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (``None`` if it has none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return None


def default_cache_dir() -> Path:
    """``$LRP_CACHE_DIR``, else ``$XDG_CACHE_HOME/lrp/crp``, else ``~/.cache/lrp/crp``."""
    if os.environ.get("LRP_CACHE_DIR"):
        return Path(os.environ["LRP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lrp" / "crp"


class _RulesAbove(Primitive):
    """Removes the rules of the weighted layers that run up to the lowest of
    ``layers`` (that layer included).

    A concept's relevance at a layer's output depends only on the rules above the
    layer, and rules leave every output's value unchanged, so without these rules
    the scores are the same, minus the modified forward passes below (on VGG16 at
    its last convolution, all of them).  A weighted module that runs below the
    layer and again above it would lose its rule above as well.
    """

    def __init__(self, layers: Sequence[str]):
        self.layers = list(layers)

    def assign(self, layers: ModelLayers, mapping: dict) -> None:
        position = {name: i for i, name in enumerate(layers.order)}
        ends = [max((i for leaf, i in position.items()
                     if leaf == name or leaf.startswith(name + ".")), default=-1)
                for name in self.layers]
        cut = min(ends)
        for name in list(mapping):
            if position.get(name, cut + 1) <= cut and is_weighted(layers.modules[name]):
                del mapping[name]


def collect_references(model: nn.Module, loader: DataLoader, composite: Composite | None,
                       layers: Sequence[str], *, n: int = 8,
                       target: None | int | str = None, concepts: Concepts = None,
                       output_relevance: str = "logit",
                       cache_dir: None | bool | str | Path = None,
                       store: None | str | Path = None, data_key: str | None = None,
                       checkpoint_every: int = 10, overwrite: bool = False,
                       progress: bool | None = None) -> References:
    """Reference samples of every concept of ``layers`` by relevance and by activation.

    Runs in one process, or unchanged on every rank of an initialised
    ``torch.distributed`` process group (e.g. under ``torchrun``): each rank takes
    its share of the dataset's chunks and the top-``n`` lists are merged exactly
    (ties broken by the lower dataset index), so the result is the same for any
    number of processes.  Progress is checkpointed in a store (every
    ``checkpoint_every`` batches); a run that was killed resumes where it stopped
    and ends with the same result as an uninterrupted run.

    Parameters
    ----------
    model
        The model (eval mode); left unchanged.
    loader
        A :class:`torch.utils.data.DataLoader` over the dataset, without shuffling
        (references are dataset indices); batches are inputs or ``(inputs, labels)``.
        Its dataset, ``batch_size``, ``num_workers`` and ``collate_fn`` are used.
    composite
        The LRP rules.
    layers
        Module names.
    n
        References kept per concept and mode.
    target
        The explained class of each sample: ``None`` (predicted), ``"label"`` (the
        loader's labels) or an int.
    concepts
        Concept definition (one for all layers or a mapping layer -> definition);
        default: channels.  A concept's relevance is the sum of its relevance, its
        activation the maximum of its activation.
    output_relevance
        As for :func:`lrp.explain`.
    cache_dir
        Where stores are kept, one directory per key (``references-KEY``): ``None``
        for :func:`default_cache_dir`, ``False`` for none (nothing is written and
        nothing can be resumed).
    store
        A store directory of your choice instead (see :mod:`lrp.data.store`); a
        store there written with other model weights, rules, settings or data is
        refused (:class:`lrp.data.StoreMismatch`) unless ``overwrite``.
    data_key
        A string identifying the data.  By default the data are hashed (one pass
        over the loader without the model, shared by the ranks); give a key (e.g. a
        path and version) to skip that pass for large datasets.
    checkpoint_every
        Batches per chunk of the store (used when the store is created).
    overwrite
        Replace a ``store`` written with other settings.
    progress
        Show a progress bar with samples/s (``None``: in a terminal; rank 0 only).

    Returns
    -------
    References
        The same on every rank.
    """
    source = Source.of(loader) if isinstance(loader, DataLoader) else None
    if source is None:
        raise TypeError(f"loader must be a torch DataLoader, got {type(loader).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not (target is None or target == "label" or (isinstance(target, int)
                                                    and not isinstance(target, bool))):
        raise ValueError(f"target must be None, 'label' or an int, got {target!r}")
    checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
    layers = tuple(dict.fromkeys(layers))
    if not layers:
        raise ValueError("no layers given")
    check_layers(model, layers)
    composite = composite if composite is not None else Composite(name="GradientXInput")
    group = Group.current()
    device = _device(model)
    first, _ = source.first()
    first = first.to(device) if device is not None else first
    settings = {
        "layers": list(layers), "n": n, "target": target, "output_relevance": output_relevance,
        "concepts": {layer: concept_of(concepts, layer).key() for layer in layers},
        "rules": composite.tree(model, first), "attribution": composite.attribution,
        "format": _FORMAT,
    }
    key = make_key(settings, model, source, group, data_key=data_key, progress=progress)
    chunk_size = checkpoint_every * source.batch_size
    if store is None and cache_dir is not False:
        base = Path(cache_dir if cache_dir not in (None, True) else default_cache_dir())
        store = base / f"references-{key.value}"
    if store is None:
        layout: Store | Layout = Layout(len(source), chunk_size)
    else:
        layout = Store.prepare(store, "references", key, len(source), chunk_size, group,
                               overwrite)
        if layout.complete:
            return References.load(layout.path)

    best: dict[str, dict[str, list[Tensor]]] = {m: {} for m in MODES}
    # chunks finished by an earlier run: their top-n lists, read by the ranks in turn
    for chunk in shard(group.broadcast(layout.done() if group.rank == 0 else None),
                       group.rank, group.world):
        _absorb(best, _read_partial(layout, chunk, layers), n)  # type: ignore[arg-type]
    partial: dict[str, dict[str, list[Tensor]]] = {m: {} for m in MODES}
    started = [False]
    above = Composite(*composite.primitives, _RulesAbove(layers), canonizers=composite.canonizers,
                      attribution=composite.attribution, name=composite.name)

    def process(writer, start: int, x: Tensor, y: Tensor | None) -> None:
        x = x.to(device) if device is not None else x
        if target == "label" and y is None:
            raise ValueError("target='label' needs batches of (inputs, labels)")
        audit = "warn" if group.rank == 0 and not started[0] else "off"
        started[0] = True
        with capture(model, x, above, layers, output_relevance=output_relevance,
                     audit=audit) as fw:
            labels = y.to(fw.output.device) if target == "label" else target
            t, seed = fw.targets(labels)
            grads = fw.grads(seed, layers, retain=False)
            index = torch.arange(start, start + x.shape[0])
            t = t.cpu() if t is not None else torch.full_like(index, -1)
            for layer, g in zip(layers, grads):
                concept = concept_of(concepts, layer)
                shape = fw.shape(layer)
                scores = {"relevance": concept.relevance(fw.relevance(layer, g), shape),
                          "activation": concept.activation(fw.activations[layer], shape)}
                for mode, s in scores.items():
                    s = s.detach().cpu()
                    c = s.shape[1]
                    _merge(partial[mode], layer, s.T, index.expand(c, -1), t.expand(c, -1), n)

    def finish(writer) -> None:
        for mode in MODES:
            for i, layer in enumerate(layers):
                for part, name in zip(partial[mode][layer], ("values", "indices", "targets")):
                    writer.save(f"{mode}.{i}.{name}", part.numpy())
        _absorb(best, partial, n)
        for mode in MODES:
            partial[mode].clear()

    computed = run_chunks(layout, source, group, process, finish=finish, progress=progress,
                          desc="references")
    # exact merge across ranks: every rank's top-n lists (the merge order does not matter)
    states = group.all_gather({m: {k: [t.numpy() for t in v] for k, v in best[m].items()}
                               for m in MODES})
    best = {m: {} for m in MODES}
    for state in states:
        _absorb(best, {m: {k: [torch.from_numpy(a) for a in v] for k, v in state[m].items()}
                       for m in MODES}, n)
    values, indices, targets = ({m: {} for m in MODES} for _ in range(3))
    for mode in MODES:
        for layer in layers:
            values[mode][layer], indices[mode][layer], targets[mode][layer] = best[mode][layer]
    path = layout.path / RESULT if isinstance(layout, Store) else None
    refs = References(layers, n, values, indices, targets, settings, key.value, path, False,
                      computed)
    if isinstance(layout, Store):
        error = None
        if group.rank == 0:
            try:
                refs.save(layout.path / RESULT)
                layout.finish()
            except Exception as err:  # reported to every rank by check()
                error = err
        group.check(error, "writing the references")
    return refs


def _read_partial(store: Store, chunk: int, layers: Sequence[str]
                  ) -> dict[str, dict[str, list[Tensor]]]:
    """The top-n lists of one chunk, as written by an earlier run."""
    return {mode: {layer: [torch.from_numpy(np.array(store.read(chunk, f"{mode}.{i}.{name}")))
                           for name in ("values", "indices", "targets")]
                   for i, layer in enumerate(layers)} for mode in MODES}


def _absorb(best: dict[str, dict[str, list[Tensor]]], other: dict[str, dict[str, list[Tensor]]],
            n: int) -> None:
    for mode, per_layer in other.items():
        for layer, (v, i, t) in per_layer.items():
            _merge(best[mode], layer, v, i, t, n)


def _merge(state: dict[str, list[Tensor]], layer: str, values: Tensor, index: Tensor,
           target: Tensor, n: int) -> None:
    """Merge candidates ``(n_concepts, m)`` into the top-``n`` lists of ``layer``.

    Order: highest value first, ties by the lower dataset index, so that the result
    depends only on the set of candidates, not on the order in which chunks, batches
    or ranks deliver them.  Missing entries are ``(-inf, -1, -1)`` and come last.
    """
    if layer in state:
        old_v, old_i, old_t = state[layer]
        values = torch.cat([old_v, values.to(old_v.dtype)], 1)
        index = torch.cat([old_i, index], 1)
        target = torch.cat([old_t, target], 1)
    else:
        c = values.shape[0]
        pad = max(0, n - values.shape[1])
        values = torch.cat([values, values.new_full((c, pad), float("-inf"))], 1)
        index = torch.cat([index, index.new_full((c, pad), -1)], 1)
        target = torch.cat([target, target.new_full((c, pad), -1)], 1)
    by_index = torch.where(index < 0, torch.iinfo(torch.long).max, index).argsort(dim=1, stable=True)
    values, index, target = (a.gather(1, by_index) for a in (values, index, target))
    order = values.argsort(dim=1, descending=True, stable=True)[:, :n]
    state[layer] = [values.gather(1, order), index.gather(1, order), target.gather(1, order)]


@dataclass
class ReferenceSample:
    """One reference sample of a concept.

    Attributes
    ----------
    index
        Dataset index.
    value
        Its concept relevance or activation.
    image
        The input, cropped to ``box`` (``(C, h, w)``, as the model sees it).
    heatmap
        The conditional heatmap of the concept on this sample, cropped to ``box``
        (``(C, h, w)``).
    box
        ``(top, left, bottom, right)`` of the crop in the full input (bottom/right
        exclusive).
    """

    index: int
    value: float
    image: Tensor
    heatmap: Tensor
    box: tuple[int, int, int, int]


def relevance_box(heatmap: Tensor, mass: float = 0.9, min_size: float = 0.25
                  ) -> tuple[int, int, int, int]:
    """The box holding about ``mass`` of the positive relevance of a ``(..., H, W)`` map.

    The box spans the central ``mass`` quantile range of the positive relevance
    summed over rows and over columns; it is at least ``min_size`` of the image's
    height and width (grown around its center).  An all-non-positive map gives the
    whole image.
    """
    if not 0 < mass <= 1 or not 0 < min_size <= 1:
        raise ValueError("mass and min_size must be in (0, 1]")
    p = heatmap.detach().double()
    p = p.reshape(-1, *p.shape[-2:]).sum(0).clamp(min=0)
    H, W = p.shape
    total = p.sum()
    if total <= 0:
        return 0, 0, H, W

    def span(marginal: Tensor, size: int) -> tuple[int, int]:
        cdf = marginal.cumsum(0) / total
        q = (1 - mass) / 2
        lo = int((cdf <= q).sum())
        hi = int((cdf < 1 - q).sum()) + 1
        lo, hi = min(lo, size - 1), max(min(hi, size), lo + 1)
        need = max(1, round(min_size * size))
        if hi - lo < need:
            center = (lo + hi) / 2
            lo = round(center - need / 2)
            lo = max(0, min(lo, size - need))
            hi = lo + need
        return lo, hi

    top, bottom = span(p.sum(1), H)
    left, right = span(p.sum(0), W)
    return top, left, bottom, right


def reference_samples(model: nn.Module, composite: Composite | None, references: References,
                      dataset, layer: str, concept: int, *, mode: str = "relevance",
                      n: int | None = None, crop: bool = True, mass: float = 0.9,
                      concepts: Concepts = None, output_relevance: str = "logit"
                      ) -> list[ReferenceSample]:
    """The references of one concept with their conditional heatmaps, cropped.

    For relevance references the heatmap is the conditional heatmap of the concept
    for the class explained during :func:`collect_references`; for activation
    references it is the concept's positive activation propagated to the input.
    One forward pass and one batched backward pass for all references.

    Parameters
    ----------
    model, composite
        As for :func:`collect_references`.
    references
        From :func:`collect_references`.
    dataset
        The dataset the references index (``loader.dataset``); items are inputs or
        ``(input, label)``.
    layer, concept
        The concept.
    mode
        ``"relevance"`` or ``"activation"``.
    n
        How many (default all kept).
    crop
        Crop to the most relevant region (:func:`relevance_box` with ``mass``).
    concepts
        The concept definitions used for ``references``.
    output_relevance
        As for :func:`lrp.explain`.

    Returns
    -------
    list of ReferenceSample
    """
    indices, values = references.top(layer, concept, mode)
    if n is not None:
        indices, values = indices[:n], values[:n]
    if len(indices) == 0:
        return []
    x = torch.stack([split_batch(dataset[int(i)])[0] for i in indices])
    device = _device(model)
    x = x.to(device) if device is not None else x
    pos = {int(i): j for j, i in enumerate(references.indices[mode][layer][concept])}
    targets = references.targets[mode][layer][concept][[pos[int(i)] for i in indices]]
    definition = concept_of(concepts, layer)
    with capture(model, x, composite, [layer], output_relevance=output_relevance,
                 audit="off") as fw:
        shape = fw.shape(layer)
        definition.check([concept], shape, layer)
        mask = definition.mask([concept], shape, fw.outputs[layer])
        if mode == "relevance" and bool((targets >= 0).all()):
            _, seed = fw.targets(targets.to(fw.output.device))
            (g,) = fw.grads(seed, [layer])
        else:
            g = (fw.outputs[layer].detach() > 0).to(fw.outputs[layer].dtype)
        heat, _ = fw.propagate(layer, (g * mask).unsqueeze(0), batch_size=1, progress=False)
    heat = heat[0].detach()  # type: ignore[index]
    out = []
    for j, i in enumerate(indices):
        box = relevance_box(heat[j], mass) if crop else (0, 0, *heat.shape[-2:])
        t, left, b, r = box
        out.append(ReferenceSample(int(i), float(values[j]), x[j][..., t:b, left:r].cpu(),
                                   heat[j][..., t:b, left:r].cpu(), box))
    return out

