"""``lrp demo``: explain held-out digits with the shipped model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

from PIL import Image

from .common import (COMPOSITES, NEAREST, CLIError, bounds_and_composite, check_cmap,
                     composite_name, enlarge, load_model, preprocessing, run_explanation)


def run(args: argparse.Namespace) -> int:
    """``lrp demo``: explain held-out digits with the shipped model."""
    from .. import demo
    from ..image import grid, heatmap, save

    check_cmap(args.cmap)
    composite_name(args.composite)
    if not 1 <= args.n <= 60:
        raise CLIError(f"-n must be between 1 and 60, got {args.n}")
    loaded = load_model("demo")
    prep = preprocessing(argparse.Namespace(size=None, mean=None, std=None, grayscale=False),
                          loaded)
    args.low = args.high = None
    composite = bounds_and_composite(args, prep)
    x, labels = demo.demo_inputs(args.n)
    explanation = run_explanation(loaded.model, x, composite, None, "warn")
    pred = explanation.output.argmax(1)
    out = Path(args.out)
    written: List[Path] = []
    inputs, heats, captions = [], [], []
    for i in range(len(x)):
        true, guess = int(labels[i]), int(pred[i])
        heat = heatmap(explanation.relevance[i], args.cmap)
        written.append(save(enlarge(heat), out / f"digit_{i:02d}_true{true}_pred{guess}.png"))
        inputs.append(Image.fromarray(prep.denormalize(x[i])).resize((128, 128), NEAREST))
        heats.append(heat.resize((128, 128), NEAREST))
        captions.append(f"true {true}/pred {guess}")
    board = grid(inputs + heats, labels=["input"] * len(x) + captions, ncols=len(x), pad=4)
    written.append(save(board, out / "grid.png"))
    correct = int((pred == labels).sum())
    name = composite.name if composite is not None else "GradientXInput"
    for path in written:
        print(f"wrote {path}")
    print(f"explained {len(x)} held-out digits with {name}; predicted {correct}/{len(x)} correctly")
    print(f"demo model: DigitsCNN, held-out test accuracy {demo.ACCURACY:.4f} "
          f"({demo.demo_info().get('n_test', '?')} digits)")
    if explanation.audit is not None and not explanation.audit.ok:
        print(f"lrp: warning: {explanation.audit}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add the subcommand to the ``lrp`` parser's subparsers."""
    demo = sub.add_parser("demo", help="explain held-out digits with the shipped model",
                          description="Explain held-out handwritten digits with the shipped "
                                      "demo CNN; no download needed.")
    demo.add_argument("--out", default="lrp-demo", metavar="DIR",
                      help="output directory (default: %(default)s)")
    demo.add_argument("--composite", default="epsilon-gamma-box", metavar="NAME",
                      help="rule preset: " + ", ".join(COMPOSITES) + " (default: %(default)s)")
    demo.add_argument("-n", type=int, default=10, help="number of digits, 1-60 "
                                                       "(default: %(default)s)")
    demo.add_argument("--cmap", default="bwr", help="colormap (default: %(default)s)")
    demo.set_defaults(func=run)
