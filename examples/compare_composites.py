"""Compare every preset composite on a shipped model, side by side.

Explains a few held-out samples with a shipped model (predicted class): by default
Fashion-MNIST photos with :class:`lrp.demo.fashion.FashionCNN` (BatchNorm fused by
``MergeBatchNorm``, residual blocks), or digits with ``--model digits``.  Each preset
of :mod:`lrp.composites` and gradient x input explains them, and one labelled grid
``compare_composites.png`` shows one row per sample, the input first, then one column
per method.  Red is positive, blue negative; each map
is scaled to its own largest ``|relevance|``.  ``GuidedBackprop`` shows a modified
gradient, not relevance.

Usage::

    python examples/compare_composites.py [--out DIR] [-n N] [--model fashion|digits]

Needs only the package (numpy, Pillow, torch); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from lrp import explain
from lrp.cli import COMPOSITES, make_composite
from lrp.demo import MODELS, shipped_model
from lrp.image import grid, heatmap, save

DEFAULT_OUT = Path(__file__).resolve().parent / "output"
#: Presets in the order of the columns (command-line names of :data:`lrp.cli.COMPOSITES`).
METHODS = ["epsilon-gamma-box", "epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1",
           "epsilon-alpha2-beta1-flat", "excitation-backprop", "guided-backprop", "gradient"]

def cell_size(side: int, at_least: int = 160) -> int:
    """Maps are enlarged by an integer factor to at least ``at_least`` pixels."""
    return side * math.ceil(at_least / side)


_NEAREST = getattr(Image, "Resampling", Image).NEAREST


def titled(image: Image.Image, lines: Sequence[str], size: int = 18,
           color: Sequence[int] = (0, 0, 0)) -> Image.Image:
    """``image`` below a white band with ``lines`` of text in ``color``."""
    try:
        font = ImageFont.load_default(size=size)  # scalable font: Pillow >= 10.1
    except TypeError:
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    height = measure.textbbox((0, 0), "Ag", font=font)[3] + 6
    band = len(lines) * height + 8
    canvas = Image.new("RGB", (image.width, image.height + band), (255, 255, 255))
    canvas.paste(image, (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((8, 6 + i * height), line, fill=tuple(color), font=font)
    return canvas


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: examples/output)")
    parser.add_argument("-n", type=int, default=6, help="number of samples, 1-60 (default: 6)")
    parser.add_argument("--model", default="fashion", choices=list(MODELS),
                        help="shipped model (default: fashion)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    assert set(METHODS) == set(COMPOSITES), "a preset is missing from the comparison"

    shipped = shipped_model(args.model)
    model = shipped.load()
    x, labels = shipped.inputs(args.n)
    mean, std = shipped.mean[0], shipped.std[0]
    cell = cell_size(shipped.size[0])
    maps: list[torch.Tensor] = []
    names: list[str] = []
    print(f"{'method':<24} relevance sum / explained logit (mean over {len(x)} {shipped.noun}s)")
    for method in METHODS:
        composite = make_composite(method, low=shipped.low, high=shipped.high)  # MergeBatchNorm
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # shipped models are fully covered: no audit warning
            explanation = explain(model, x, composite)
        name = composite.name if composite is not None else "GradientXInput"
        logit = explanation.output.gather(1, explanation.target[:, None])[:, 0]
        ratio = (explanation.conservation() / logit).mean()
        note = "(a gradient, not relevance)" if method == "guided-backprop" else f"{ratio:.3f}"
        print(f"{name:<24} {note}")
        maps.append(explanation.relevance)
        names.append(name)
    predicted = explanation.output.argmax(1)

    tiles: list[Image.Image] = []
    captions: list[str] = []
    for i in range(len(x)):
        pixels = ((x[i, 0] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        tiles.append(Image.fromarray(pixels).convert("RGB").resize((cell, cell), _NEAREST))
        true, pred = shipped.class_name(int(labels[i])), shipped.class_name(int(predicted[i]))
        captions.append(true if true == pred else f"{true}, predicted {pred}")
        for name, relevance in zip(names, maps):
            tiles.append(heatmap(relevance[i]).resize((cell, cell), _NEAREST))
            captions.append(name)
    board = grid(tiles, labels=captions, ncols=len(METHODS) + 1, pad=6)
    board = titled(board, [
        f"lrp presets on the shipped {shipped.title} (held-out {shipped.noun}s, "
        "predicted class explained)",
        ("red: positive, blue: negative, each map scaled to its own max |R|; "
         "GuidedBackprop: modified gradient, not relevance"),
    ])
    path = save(board, args.out / "compare_composites.png")
    print(f"wrote {path} ({board.width}x{board.height})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
