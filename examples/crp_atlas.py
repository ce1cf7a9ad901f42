"""Concept atlas of a digit prediction: Concept Relevance Propagation (CRP).

Explains a held-out digit with the shipped :class:`lrp.demo.DigitsCNN` through the
most relevant channels (concepts) of one layer.  First, relevance maximization over
scikit-learn's 1797 digits (a ``DataLoader``) finds the reference samples of every
channel: the digits on which the channel carried the most relevance for their true
class; the result is cached in ``OUT/cache`` and reused by later runs.  Then the
atlas ``crp_atlas.png`` shows the input and its LRP heatmap, and for each top
channel its share of the layer's relevance, its conditional heatmap, and its
reference samples cropped to their most relevant region with their conditional
heatmaps blended in (red positive, blue negative).  Finally the attribution graph of
the top channel is printed: which lower-layer channels carry its relevance.

Usage::

    python examples/crp_atlas.py [--out DIR] [--layer features.8] [--concepts 4]
                                 [--refs 5] [--index 0]

Needs scikit-learn for the digits; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonGammaBox
from lrp.crp import attribution_graph, collect_references, concept_atlas, top_concepts
from lrp.demo import HIGH, LOW, MEAN, STD, demo_inputs, load_demo_model, prepare_digits

DEFAULT_OUT = Path(__file__).resolve().parent / "output"
#: The convolutions of the demo model, top-down.
CONVOLUTIONS = ["features.8", "features.4", "features.0"]


def main(argv: Sequence[str] | None = None) -> Path:
    """Write the atlas and return its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--layer", default="features.8", choices=CONVOLUTIONS)
    parser.add_argument("--concepts", type=int, default=4, help="top channels shown")
    parser.add_argument("--refs", type=int, default=5, help="reference samples per channel")
    parser.add_argument("--index", type=int, default=0, help="which held-out digit (0-59)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = load_demo_model()
    composite = EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()])
    digits = load_digits()
    dataset = TensorDataset(prepare_digits(digits.images), torch.as_tensor(digits.target))
    loader = DataLoader(dataset, batch_size=256)
    references = collect_references(model, loader, composite, CONVOLUTIONS, n=8,
                                    target="label", cache_dir=args.out / "cache")
    print(f"references of {len(dataset)} digits "
          f"({'loaded from' if references.loaded else 'stored in'} {references.path})")

    x, labels = demo_inputs(args.index + 1)
    x, label = x[args.index:args.index + 1], int(labels[args.index])
    path = args.out / "crp_atlas.png"
    concept_atlas(model, x, composite, args.layer, references, dataset, k=args.concepts,
                  n_refs=args.refs, mean=MEAN, std=STD, cell_size=96,
                  class_names=[str(i) for i in range(10)], path=path)
    ranking = top_concepts(model, x, composite, args.layer, k=args.concepts, heatmaps=False)
    print(f"digit {label}, predicted {int(ranking.target[0])}; top channels of {args.layer}: "
          + ", ".join(f"#{int(c)} {100 * float(s):.1f}%"
                      for c, s in zip(ranking.ids[0], ranking.share[0])))
    lower = CONVOLUTIONS[CONVOLUTIONS.index(args.layer) + 1:]
    if lower:
        graph = attribution_graph(model, x, composite, args.layer, int(ranking.ids[0, 0]),
                                  lower, k=2)
        print("attribution graph (relevance, share of the parent):")
        print(graph)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return path


if __name__ == "__main__":
    main()
