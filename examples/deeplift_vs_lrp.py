"""DeepLift next to LRP on a shipped model, side by side.

Explains a few held-out samples with a shipped model (predicted class): by default
Fashion-MNIST photos with :class:`lrp.demo.fashion.FashionCNN`, or digits with
``--model digits``.  LRP (``EpsilonGammaBox`` with ``MergeBatchNorm``), DeepLift against
a black image (``Rescale`` and ``RevealCancel``) and DeepLiftShap against other
held-out samples explain them, and one labelled grid ``deeplift_vs_lrp.png`` shows
one row per sample, the input first, then one column per method.  Red is positive,
blue negative; each map is scaled to its own largest ``|R|``.

LRP explains the logit ``f(x)``; DeepLift explains the difference ``f(x) - f(x_ref)``
from the reference's logit, and its contributions add up to it exactly
(*summation-to-delta*): the script prints both decompositions' errors.

Usage::

    python examples/deeplift_vs_lrp.py [--out DIR] [-n N] [--background M] [--model fashion|digits]

Needs only the package (numpy, Pillow, torch); nothing is downloaded.
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
from lrp.deeplift import deeplift, deeplift_shap
from lrp.demo import MODELS, shipped_model
from lrp.image import grid, heatmap, save

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_composites import cell_size, titled  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "output"
_NEAREST = getattr(Image, "Resampling", Image).NEAREST


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: examples/output)")
    parser.add_argument("-n", type=int, default=6, help="number of samples (default: 6)")
    parser.add_argument("--background", type=int, default=20,
                        help="held-out samples used as DeepLiftShap references (default: 20)")
    parser.add_argument("--model", default="fashion", choices=list(MODELS),
                        help="shipped model (default: fashion)")
    args = parser.parse_args(argv)
    if not 1 <= args.n or args.n + args.background > 60:
        parser.error("need 1 <= n and n + background <= 60 (the shipped samples)")
    start = time.perf_counter()

    shipped = shipped_model(args.model)
    model = shipped.load()
    samples, labels = shipped.inputs(args.n + args.background)
    x, background = samples[:args.n], samples[args.n:]
    black = shipped.low  # the normalized value of a black pixel: DeepLift's reference image
    mean, std, cell = shipped.mean[0], shipped.std[0], cell_size(shipped.size[0])

    lrp = explain(model, x, EpsilonGammaBox(shipped.low, shipped.high,
                                            canonizers=[MergeBatchNorm()]))
    target = lrp.target  # explain the same (predicted) class with every method
    methods = {
        "LRP EpsilonGammaBox": lrp,
        "DeepLift Rescale": deeplift(model, x, target, reference=black),
        "DeepLift RevealCancel": deeplift(model, x, target, reference=black,
                                          rule="reveal_cancel"),
        "DeepLiftShap": deeplift_shap(model, x, background, target),
    }

    logit = lrp.output.gather(1, target[:, None])[:, 0]
    print(f"{'method':<24} {'explains':<26} largest decomposition error "
          f"(over {len(x)} {shipped.noun}s)")
    for name, e in methods.items():
        if e.convergence is None:  # LRP: the biases absorb part of the logit
            error, explains = (e.conservation() - logit).abs().max(), "f(x) (less biases)"
        else:
            error = e.convergence.abs().max()
            explains = "f(x) - f(black)" if "Shap" not in name else "f(x) - mean f(background)"
        print(f"{name:<24} {explains:<26} {float(error):.2e}")

    tiles, captions = [], []
    for i in range(len(x)):
        pixels = ((x[i, 0] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        tiles.append(Image.fromarray(pixels).convert("RGB").resize((cell, cell), _NEAREST))
        true, pred = shipped.class_name(int(labels[i])), shipped.class_name(int(target[i]))
        captions.append(true if true == pred else f"{true}, predicted {pred}")
        for name, e in methods.items():
            tiles.append(heatmap(e.relevance[i]).resize((cell, cell), _NEAREST))
            captions.append(name)
    board = grid(tiles, labels=captions, ncols=len(methods) + 1, pad=6)
    board = titled(board, [
        f"DeepLift vs LRP on the shipped {shipped.title} (held-out {shipped.noun}s, "
        "predicted class)",
        f"DeepLift: black reference; Shap: {len(background)} other {shipped.noun}s; "
        "red +, blue -",
    ])
    path = save(board, args.out / "deeplift_vs_lrp.png")
    print(f"wrote {path} ({board.width}x{board.height})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
