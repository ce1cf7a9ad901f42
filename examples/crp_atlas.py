"""Concept atlas of a prediction: Concept Relevance Propagation (CRP).

Explains a held-out sample of a shipped model (by default a Fashion-MNIST photo with
:class:`lrp.demo.fashion.FashionCNN`; ``--model digits`` for the digits CNN) through
the most relevant channels (concepts) of one layer.  First, relevance maximization
over a dataset (a ``DataLoader``) finds the reference samples of every channel: the
samples on which the channel carried the most relevance for their true class; the
result is cached in ``OUT/cache`` and reused by later runs.  Then the atlas
``crp_atlas.png`` shows the input and its LRP heatmap, and for each top channel its
share of the layer's relevance, its conditional heatmap, and its reference samples
cropped to their most relevant region with their conditional heatmaps blended in
(red positive, blue negative).  Finally the attribution graph of the top channel is
printed: which lower-layer channels carry its relevance.

The reference dataset (``--references dataset``, the default) is the 10,000
Fashion-MNIST test photos from Debian's ``dataset-fashion-mnist``
(:func:`lrp.demo.fashion.load_fashion_mnist`; the first ``--limit`` of them, 2000 by
default; the 60 shipped photos if it is not installed) or scikit-learn's 1797 digits;
``--references samples`` uses the 60 shipped held-out samples of either model.

Usage::

    python examples/crp_atlas.py [--out DIR] [--model fashion|digits] [--layer NAME]
                                 [--concepts 4] [--refs 5] [--index 0]
                                 [--references dataset|samples] [--limit 2000]

Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonGammaBox
from lrp.crp import attribution_graph, collect_references, concept_atlas, top_concepts
from lrp.demo import ShippedModel, shipped_model

DEFAULT_OUT = Path(__file__).resolve().parent / "output"
#: Convolutions of each shipped model that every path passes through, top-down.
CONVOLUTIONS = {"fashion": ["features.1.2", "features.0.2", "stem.0"],
                "digits": ["features.8", "features.4", "features.0"]}


def reference_data(shipped: ShippedModel, which: str, limit: int) -> tuple[TensorDataset, str]:
    """The dataset for relevance maximization (at most ``limit`` Fashion-MNIST test
    photos) and a description of it."""
    if which == "dataset" and shipped.name == "digits":
        from sklearn.datasets import load_digits  # needs scikit-learn

        digits = load_digits()
        return (TensorDataset(shipped.prepare(digits.images), torch.as_tensor(digits.target)),
                "scikit-learn's digits")
    if which == "dataset" and shipped.name == "fashion":
        from lrp.demo.fashion import load_fashion_mnist

        try:
            images, labels = load_fashion_mnist("test")
            images, labels = images[:limit], labels[:limit]
            return (TensorDataset(shipped.prepare(images), torch.as_tensor(labels).long()),
                    "Fashion-MNIST test photos")
        except FileNotFoundError:
            print("dataset-fashion-mnist is not installed: references from the shipped photos")
    images, labels = shipped.raw_samples()
    return (TensorDataset(shipped.prepare(images), torch.as_tensor(labels).long()),
            f"the shipped held-out {shipped.noun}s")


def main(argv: Sequence[str] | None = None) -> Path:
    """Write the atlas and return its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--model", default="fashion", choices=list(CONVOLUTIONS))
    parser.add_argument("--layer", default=None,
                        help="conditioned layer (default: the model's highest listed convolution: "
                             + "; ".join(f"{m}: {', '.join(c)}" for m, c in CONVOLUTIONS.items())
                             + ")")
    parser.add_argument("--concepts", type=int, default=4, help="top channels shown")
    parser.add_argument("--refs", type=int, default=5, help="reference samples per channel")
    parser.add_argument("--index", type=int, default=0, help="which held-out sample (0-59)")
    parser.add_argument("--references", default="dataset", choices=["dataset", "samples"],
                        help="where reference samples come from (default: dataset)")
    parser.add_argument("--limit", type=int, default=2000,
                        help="Fashion-MNIST test photos searched for references "
                             "(default: 2000; 10000 for all)")
    args = parser.parse_args(argv)
    convolutions = CONVOLUTIONS[args.model]
    layer = args.layer or convolutions[0]
    if layer not in convolutions:
        parser.error(f"--layer must be one of {', '.join(convolutions)} for {args.model}")

    start = time.perf_counter()
    shipped = shipped_model(args.model)
    model = shipped.load()
    composite = EpsilonGammaBox(shipped.low, shipped.high, canonizers=[MergeBatchNorm()])
    dataset, described = reference_data(shipped, args.references, args.limit)
    loader = DataLoader(dataset, batch_size=256)
    references = collect_references(model, loader, composite, convolutions, n=8,
                                    target="label", cache_dir=args.out / "cache")
    print(f"references of {len(dataset)} samples, {described} "
          f"({'loaded from' if references.loaded else 'stored in'} {references.path})")

    x, labels = shipped.inputs(args.index + 1)
    x, label = x[args.index:args.index + 1], int(labels[args.index])
    path = args.out / "crp_atlas.png"
    concept_atlas(model, x, composite, layer, references, dataset, k=args.concepts,
                  n_refs=args.refs, mean=shipped.mean, std=shipped.std, cell_size=96,
                  class_names=shipped.class_names, path=path)
    ranking = top_concepts(model, x, composite, layer, k=args.concepts, heatmaps=False)
    print(f"{shipped.noun} of class {shipped.class_name(label)}, predicted "
          f"{shipped.class_name(int(ranking.target[0]))}; top channels of {layer}: "
          + ", ".join(f"#{int(c)} {100 * float(s):.1f}%"
                      for c, s in zip(ranking.ids[0], ranking.share[0])))
    lower = convolutions[convolutions.index(layer) + 1:]
    if lower:
        graph = attribution_graph(model, x, composite, layer, int(ranking.ids[0, 0]),
                                  lower, k=2)
        print("attribution graph (relevance, share of the parent):")
        print(graph)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return path


if __name__ == "__main__":
    main()
