"""Concept atlas: one picture explaining a prediction through its top concepts."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from .. import image as img
from ..composites import Composite
from ..targets import Target
from .attribution import ConceptRanking, Concepts, concept_of, top_concepts
from .maximization import References, reference_samples


def _picture(x: Tensor, mean, std) -> Image.Image:
    """The input as an image (de-normalized with ``mean`` / ``std``)."""
    return img.overlay(torch.zeros_like(x), x, alpha=0.0, mean=mean, std=std)


def concept_atlas(model: nn.Module, inputs: Tensor, composite: Composite | None, layer: str,
                  references: References, dataset, *, k: int = 4, n_refs: int = 4,
                  mode: str = "relevance", target: Target = None, concepts: Concepts = None,
                  mean=None, std=None, cell_size: int = 64, cmap: str = "bwr",
                  class_names: Sequence[str] | None = None,
                  path: None | str | Path = None) -> Image.Image:
    """A concept atlas for one prediction.

    The first row shows the input and its LRP heatmap; each further row one of the
    ``k`` most relevant concepts of ``layer``: its conditional heatmap (labelled with
    the concept id and its share of the layer's relevance) beside its reference
    samples, cropped to their most relevant region, with their conditional heatmaps
    blended over them.

    Parameters
    ----------
    model, composite
        As for :func:`lrp.explain`.
    inputs
        One sample ``(1, ...)`` (images ``(1, C, H, W)`` with ``C`` 1 or 3).
    layer
        Layer whose concepts are shown.
    references, dataset
        From :func:`lrp.crp.collect_references` over ``dataset`` (must cover ``layer``).
    k, n_refs
        Concepts shown, reference samples per concept.
    mode
        ``"relevance"`` or ``"activation"`` references.
    target
        The explained class (``None``: predicted).
    concepts
        Concept definition(s) used for ``references``.
    mean, std
        Input normalization to undo for display (see :func:`lrp.image.overlay`).
    cell_size
        Size of each cell in pixels.
    cmap
        Heatmap colormap.
    class_names
        Names of the classes for the title cell.
    path
        If given, the picture is saved there (PNG).

    Returns
    -------
    PIL.Image.Image
    """
    if inputs.shape[0] != 1:
        raise ValueError(f"an atlas explains one sample, got a batch of {inputs.shape[0]}")
    if isinstance(n_refs, bool) or not isinstance(n_refs, int) or n_refs < 0:
        raise ValueError(f"n_refs must be a non-negative int, got {n_refs!r}")
    ranking: ConceptRanking = top_concepts(model, inputs, composite, layer, k, target=target,
                                           concept=concept_of(concepts, layer), heatmap=True)
    cls = int(ranking.target[0]) if ranking.target is not None else -1
    name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else cls
    ncols = max(2, 1 + n_refs)
    blank = Image.new("RGB", (cell_size, cell_size), (255, 255, 255))
    cells = [_picture(inputs[0], mean, std), img.heatmap(ranking.heatmap[0], cmap)]
    labels = [f"input: {name}", "LRP heatmap"]
    cells += [blank] * (ncols - 2)
    labels += [""] * (ncols - 2)
    for j in range(ranking.ids.shape[1]):
        concept = int(ranking.ids[0, j])
        cells.append(img.heatmap(ranking.heatmaps[0, j], cmap))  # type: ignore[index]
        labels.append(f"#{concept}: {100 * float(ranking.share[0, j]):.1f}%")
        refs = reference_samples(model, composite, references, dataset, layer, concept,
                                 mode=mode, n=n_refs, concepts=concepts)
        for ref in refs:
            cells.append(img.overlay(ref.heatmap, ref.image, alpha=0.5, cmap=cmap,
                                     mean=mean, std=std))
            labels.append(f"ref {ref.index}")
        cells += [blank] * (ncols - 1 - len(refs))
        labels += [""] * (ncols - 1 - len(refs))
    picture = img.grid(cells, labels=labels, ncols=ncols, cell_size=cell_size)
    if path is not None:
        img.save(picture, path)
    return picture
