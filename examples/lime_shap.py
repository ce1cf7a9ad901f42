"""LIME and Kernel SHAP next to LRP on the shipped digits model, with names.

Explains the shipped held-out digits with the shipped :class:`lrp.demo.DigitsCNN`
(predicted class) by the model-agnostic methods on an 8x8 grid of cells (one cell
per pixel of the original 8x8 scans), absent cells black:

* ``lime_shap.png``: one row per digit: the input, LIME, Kernel SHAP and LRP
  (``EpsilonGammaBox``).  Red is positive, blue negative; each map is scaled to its
  own largest ``|R|``;
* ``lime_shap_global.png`` and ``lime_shap_global.html`` (the latter with plotly
  installed): :func:`lrp.plot.plot_global` of Kernel SHAP over all shipped digits,
  the mean map of each predicted class, the classes named;

and prints the first rows of ``Explanation.to_frame()``, Kernel SHAP's efficiency
error (``sum(phi) = f(x) - f(black)``) and LIME's weighted R^2.

Usage::

    python examples/lime_shap.py [--out DIR] [-n N] [--samples 500]

Needs matplotlib and pandas (``pip install 'lrp[plot,frames]'``); plotly is optional.
Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from lrp import explain
from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonGammaBox
from lrp.demo import HIGH, LOW, MEAN, STD, demo_inputs, load_demo_model
from lrp.features import grid as grid_features
from lrp.image import grid, heatmap, save
from lrp.kernel_shap import kernel_shap
from lrp.lime import lime
from lrp.plot import plot_global

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_composites import titled  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "output"
CELL = 160
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_NEAREST = getattr(Image, "Resampling", Image).NEAREST


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: examples/output)")
    parser.add_argument("-n", type=int, default=6, help="digits in the grid (default: 6)")
    parser.add_argument("--samples", type=int, default=500,
                        help="coalitions per digit (default: 500)")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 60:
        parser.error("n must be between 1 and 60 (the shipped digits)")
    start = time.perf_counter()

    model = load_demo_model()
    x, labels = demo_inputs(60)
    features = grid_features(x, 8)
    shap = kernel_shap(model, x, features=features, background=LOW, n_samples=args.samples,
                       seed=0).named(output_names=CLASSES)
    target = shap.target
    few = x[:args.n]
    limes = lime(model, few, target=target[:args.n], features=grid_features(few, 8),
                 background=LOW, n_samples=args.samples, seed=0)
    lrp = explain(model, few, EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()]),
                  target=target[:args.n])
    print(f"Kernel SHAP: largest |sum(phi) - (f(x) - f(black))| = "
          f"{float(shap.convergence.abs().max()):.1e} over {len(x)} digits")
    print(f"LIME: weighted R^2 of the surrogates {limes.surrogate.score.min():.2f} .. "
          f"{limes.surrogate.score.max():.2f}")
    frame = shap.to_frame()
    print(frame.head(3).to_string(index=False))

    tiles, captions = [], []
    methods = {"LIME": limes.relevance, "Kernel SHAP": shap.relevance, "LRP": lrp.relevance}
    for i in range(args.n):
        pixels = ((few[i, 0] * STD + MEAN).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        tiles.append(Image.fromarray(pixels).convert("RGB").resize((CELL, CELL), _NEAREST))
        captions.append(f"digit {int(labels[i])}, predicted {CLASSES[int(target[i])]}")
        for name, relevance in methods.items():
            tiles.append(heatmap(relevance[i]).resize((CELL, CELL), _NEAREST))
            captions.append(name)
    board = grid(tiles, labels=captions, ncols=len(methods) + 1, pad=6)
    board = titled(board, [
        "LIME and Kernel SHAP (8x8 cells, black when absent) vs LRP, shipped digits CNN",
        f"{args.samples} coalitions per digit; red +, blue -",
    ])
    print(f"wrote {save(board, args.out / 'lime_shap.png')}")

    axes = plot_global(shap)
    path = args.out / "lime_shap_global.png"
    axes[0].figure.savefig(path, dpi=80)
    print(f"wrote {path}")
    try:
        figure = plot_global(shap, backend="plotly")
    except ImportError as err:
        print(f"skipped lime_shap_global.html: {err}")
    else:
        path = args.out / "lime_shap_global.html"
        figure.write_html(path, include_plotlyjs="cdn")
        print(f"wrote {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
