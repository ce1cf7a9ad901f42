"""Relevance and activation maximization: reference samples of every concept.

:func:`collect_references` runs a model over a dataset and keeps, for each concept of
the chosen layers, the ``n`` samples with the highest concept relevance (relevance
maximization, Achtibat et al. 2023) and the ``n`` with the highest activation
(activation maximization).  Each batch costs one forward and one backward pass from
the output to the lowest chosen layer.  The result is stored as a small ``.npz`` file
in a cache directory, keyed by a hash of the model's parameters, the rules, the data
and the settings, so a re-run with the same inputs loads it instead of recomputing.

:func:`reference_samples` fetches the references of one concept from the dataset,
with their conditional heatmaps, cropped to the concept's most relevant region.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, SequentialSampler
from tqdm.auto import tqdm

from ..composites import Composite
from .attribution import Concepts, concept_of
from ..batching import show_progress
from .engine import capture, check_layers

MODES = ("relevance", "activation")
_FORMAT = 1


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
        first (``-inf`` where the dataset had fewer samples).
    indices
        ``indices[mode][layer]``: ``(n_concepts, n)`` dataset indices (``-1`` where
        missing).
    targets
        ``targets[mode][layer]``: ``(n_concepts, n)`` the class explained for each
        reference.
    settings
        What the result depends on (hashed into :attr:`key`).
    key
        The cache key.
    path
        The cache file, or ``None``.
    loaded
        Whether the result came from the cache.
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
        """Read a file written by :meth:`save`."""
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


def split_batch(batch) -> tuple[Tensor, Tensor | None]:
    """``(inputs, labels)`` of a dataset sample or loader batch (labels may be missing)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        label = batch[1] if len(batch) > 1 else None
        return batch[0], torch.as_tensor(label) if label is not None else None
    raise TypeError("expected batches of tensors or (inputs, labels) pairs, got "
                    f"{type(batch).__name__}")


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


def _hash_model(model: nn.Module, h) -> None:
    for name, t in list(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _hash_data(loader: DataLoader, h) -> int:
    count = 0
    for batch in loader:
        x, y = split_batch(batch)
        for t in (x, y):
            if t is not None:
                t = t.detach().cpu().contiguous()
                h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        count += x.shape[0]
    return count


def collect_references(model: nn.Module, loader: DataLoader, composite: Composite | None,
                       layers: Sequence[str], *, n: int = 8,
                       target: None | int | str = None, concepts: Concepts = None,
                       output_relevance: str = "logit",
                       cache_dir: None | bool | str | Path = None,
                       data_key: str | None = None, progress: bool | None = None
                       ) -> References:
    """Reference samples of every concept of ``layers`` by relevance and by activation.

    Parameters
    ----------
    model
        The model (eval mode); left unchanged.
    loader
        A :class:`torch.utils.data.DataLoader` over the dataset, without shuffling
        (references are dataset indices); batches are inputs or ``(inputs, labels)``.
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
        Where results are stored and looked up: ``None`` for
        :func:`default_cache_dir`, ``False`` for no cache.
    data_key
        A string identifying the data.  By default the data are hashed (one pass
        over the loader without the model); give a key (e.g. a path and version) to
        skip that pass for large datasets.
    progress
        Show a progress bar over batches (``None``: in a terminal).

    Returns
    -------
    References
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"loader must be a torch DataLoader, got {type(loader).__name__}")
    if not isinstance(loader.sampler, SequentialSampler):
        raise TypeError("the DataLoader must not shuffle (references are dataset indices): "
                         "use shuffle=False and the default sampler")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not (target is None or target == "label" or (isinstance(target, int)
                                                    and not isinstance(target, bool))):
        raise ValueError(f"target must be None, 'label' or an int, got {target!r}")
    layers = tuple(dict.fromkeys(layers))
    if not layers:
        raise ValueError("no layers given")
    check_layers(model, layers)
    composite = composite if composite is not None else Composite(name="GradientXInput")
    device = _device(model)
    first, _ = split_batch(next(iter(loader)))
    first = first[:1].to(device) if device is not None else first[:1]
    settings = {
        "layers": list(layers), "n": n, "target": target, "output_relevance": output_relevance,
        "concepts": {layer: concept_of(concepts, layer).key() for layer in layers},
        "rules": composite.tree(model, first), "attribution": composite.attribution,
        "data_key": data_key,
    }
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    _hash_model(model, h)
    if data_key is None:
        settings["samples"] = _hash_data(loader, h)
    key = h.hexdigest()[:20]
    path = None
    if cache_dir is not False:
        path = Path(cache_dir if cache_dir not in (None, True) else default_cache_dir()) \
            / f"references-{key}.npz"
        if path.is_file():
            try:
                return References.load(path)
            except (OSError, ValueError, KeyError):
                pass  # a damaged file is recomputed and replaced

    best: dict[str, dict[str, list[Tensor]]] = {m: {} for m in MODES}
    seen = 0
    chunks = len(loader) if hasattr(loader, "__len__") else 0
    with tqdm(loader, desc="references", unit="batch",
              disable=not show_progress(progress, chunks)) as bar:
        for batch in bar:
            x, y = split_batch(batch)
            x = x.to(device) if device is not None else x
            if target == "label" and y is None:
                raise ValueError("target='label' needs batches of (inputs, labels)")
            with capture(model, x, composite, layers, output_relevance=output_relevance,
                         audit="warn" if seen == 0 else "off") as fw:
                labels = y.to(fw.output.device) if target == "label" else target
                t, seed = fw.targets(labels)
                grads = fw.grads(seed, layers, retain=False)
                index = torch.arange(seen, seen + x.shape[0])
                for layer, g in zip(layers, grads):
                    concept = concept_of(concepts, layer)
                    shape = fw.shape(layer)
                    scores = {"relevance": concept.relevance(fw.relevance(layer, g), shape),
                              "activation": concept.activation(fw.activations[layer], shape)}
                    for mode, s in scores.items():
                        _merge(best[mode], layer, s.detach().float().cpu(), index,
                               t.cpu() if t is not None else torch.full_like(index, -1), n)
            seen += x.shape[0]
    values, indices, targets = ({m: {} for m in MODES} for _ in range(3))
    for mode in MODES:
        for layer in layers:
            values[mode][layer], indices[mode][layer], targets[mode][layer] = best[mode][layer]
    refs = References(layers, n, values, indices, targets, settings, key, path, False)
    if path is not None:
        refs.save(path)
    return refs


def _merge(store: dict[str, list[Tensor]], layer: str, scores: Tensor, index: Tensor,
           target: Tensor, n: int) -> None:
    """Keep the ``n`` highest ``scores`` ``(batch, n_concepts)`` per concept."""
    c = scores.shape[1]
    if layer not in store:
        store[layer] = [torch.full((c, n), float("-inf")), torch.full((c, n), -1, dtype=torch.long),
                        torch.full((c, n), -1, dtype=torch.long)]
    old_v, old_i, old_t = store[layer]
    v = torch.cat([old_v, scores.T], 1)
    i = torch.cat([old_i, index.expand(c, -1)], 1)
    t = torch.cat([old_t, target.expand(c, -1)], 1)
    top_v, pos = v.topk(n, dim=1)
    store[layer] = [top_v, i.gather(1, pos), t.gather(1, pos)]


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

