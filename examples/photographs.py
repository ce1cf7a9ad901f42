"""Heatmaps for photographs with a torchvision architecture.

Explains scikit-image's bundled sample photographs (astronaut, coffee, chelsea the
cat, rocket; no download) with a torchvision classification architecture and
writes one grid ``photographs.png``: per photograph the input, the heatmap and the
heatmap blended over the photograph.

No pretrained weights can be downloaded here.  Pass ``--weights PATH`` with a
local ``state_dict`` for the architecture (e.g. ImageNet weights saved elsewhere
with ``torch.save(model.state_dict(), PATH)``).  Without it the network has
**random weights**: the script says so in its output and in the picture.  The
heatmap of a randomly initialised network shows the image structure (edges,
texture) that the rules propagate relevance along, not a decision of a model.

Usage::

    python examples/photographs.py [--out DIR] [--arch vgg16] [--weights PATH]
                                   [--composite epsilon-gamma-box] [--size 224]

Needs scikit-image for the photographs (``pip install scikit-image``).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from lrp import explain
from lrp.cli import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CLIError,
    Preprocessing,
    load_model,
    make_composite,
)
from lrp.image import grid, heatmap, overlay, save

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_composites import titled  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "output"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
CELL = 256
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


def square(photo: np.ndarray) -> Image.Image:
    """The central square of an ``(H, W, 3)`` ``uint8`` photograph."""
    h, w = photo.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return Image.fromarray(photo[top:top + side, left:left + side]).convert("RGB")


def categories(arch: str, classes: int) -> list[str] | None:
    """ImageNet class names from torchvision's weight metadata (part of the package)."""
    import torchvision

    try:
        weights = list(torchvision.models.get_model_weights(arch))
    except (ValueError, KeyError):
        return None
    names = weights[0].meta.get("categories") if weights else None
    return list(names) if names is not None and len(names) == classes else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: examples/output)")
    parser.add_argument("--arch", default="vgg16",
                        help="torchvision classification architecture (default: vgg16)")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="local state_dict for --arch (default: random weights)")
    parser.add_argument("--composite", default="epsilon-gamma-box",
                        help="preset, as for `lrp heatmap` (default: epsilon-gamma-box)")
    parser.add_argument("--size", type=int, default=224, help="input size (default: 224)")
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS),
                        help=f"skimage.data photographs (default: {' '.join(PHOTOS)})")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    try:
        torch.manual_seed(0)  # the same random weights on every run
        loaded = load_model(f"torchvision:{args.arch}" + (f":{args.weights}" if args.weights else ""))
        prep = Preprocessing((args.size, args.size), IMAGENET_MEAN, IMAGENET_STD, False)
        low, high = prep.bounds()  # normalised black and white pixels, per channel
        composite = make_composite(args.composite, low=low, high=high)
    except CLIError as err:
        print(f"photographs.py: error: {err}", file=sys.stderr)
        return 2
    photos = []
    for name in args.photos:
        loader = getattr(skdata, name, None)
        if loader is None:
            print(f"photographs.py: error: skimage.data has no photograph {name!r}", file=sys.stderr)
            return 2
        photo = np.asarray(loader())
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=-1)
        photos.append(square(photo[..., :3]))
    random_weights = args.weights is None
    if random_weights:
        print(f"warning: no --weights given: {args.arch} has RANDOM weights. The heatmaps show "
              "image structure, not the decision of a trained model.")

    x = torch.cat([prep(photo) for photo in photos])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # audit notes of some architectures; not the topic here
        explanation = explain(loaded.model, x, composite)
    classes = categories(args.arch, explanation.output.shape[1]) if not random_weights else None

    tiles: list[Image.Image] = []
    captions: list[str] = []
    for i, (name, photo) in enumerate(zip(args.photos, photos)):
        cls = int(explanation.target[i])
        if random_weights:
            label = f"largest logit {cls}"
        else:
            label = f"class {cls}" + (f" ({classes[cls]})" if classes else "")
        relevance = explanation.relevance[i]
        tiles += [photo.resize((CELL, CELL), _BILINEAR),
                  heatmap(relevance, clip_percentile=99.5).resize((CELL, CELL), _BILINEAR),
                  overlay(relevance, prep.denormalize(x[i]), alpha=0.6,
                          clip_percentile=99.5).resize((CELL, CELL), _BILINEAR)]
        captions += [name, f"heatmap, {label}", "overlay"]
    board = grid(tiles, labels=captions, ncols=3, pad=6)
    method = composite.name if composite is not None else "GradientXInput"
    if random_weights:
        lines = [f"torchvision {args.arch} with RANDOM weights (no --weights), {method}",
                 "no decision: a random network's heatmap only shows image structure"]
        board = titled(board, lines, color=(200, 0, 0))
    else:
        board = titled(board, [f"torchvision {args.arch} ({Path(args.weights).name}), {method}",
                               "predicted class explained; red: positive, blue: negative"])
    path = save(board, args.out / "photographs.png")
    print(f"explained {len(photos)} photographs with {args.arch} and {method}")
    print(f"wrote {path} ({board.width}x{board.height})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
