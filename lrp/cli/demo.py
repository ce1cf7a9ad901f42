"""``lrp demo``: explain held-out samples with a shipped model."""
from __future__ import annotations

import argparse
import re
import sys
from typing import List

from PIL import Image

from .common import (COMPOSITES, NEAREST, CLIError, add_figure_options, blank_notice,
                     bounds_and_composite, check_cmap, check_composite, check_out, figure,
                     load_model, model_composite, notice, preprocessing, run_explanation)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(args: argparse.Namespace) -> int:
    """``lrp demo``: explain held-out samples with a shipped model."""
    from ..demo import shipped_model
    from ..image import grid, heatmap, save

    try:
        shipped = shipped_model(args.model)
    except KeyError as err:
        raise CLIError(err.args[0]) from None
    check_cmap(args.cmap)
    check_composite(args.composite)
    available = shipped.n_samples()
    if not 1 <= args.n <= available:
        raise CLIError(f"-n must be between 1 and {available}, got {args.n}")
    out = check_out(args.out)
    loaded = load_model(shipped.name)
    model_composite(args, loaded)
    prep = preprocessing(argparse.Namespace(size=None, mean=None, std=None, grayscale=False),
                         loaded)
    args.low = args.high = None
    composite = bounds_and_composite(args, prep)
    x, labels = shipped.inputs(args.n)
    explanation = run_explanation(loaded.model, x, composite, None, "warn")
    pred = explanation.output.argmax(1)
    name = composite.name if composite is not None else "GradientXInput"
    written: List = []
    inputs, heats, captions, truths = [], [], [], []
    for i in range(len(x)):
        true, guess = int(labels[i]), int(pred[i])
        true_name, guess_name = shipped.class_name(true), shipped.class_name(guess)
        relevance = explanation.relevance[i]
        blank = blank_notice(f"{shipped.noun} {i}", explanation.output[i], relevance)
        if blank:
            notice(blank)
        heat = heatmap(relevance, args.cmap)
        score = float(explanation.output[i, guess])
        label = [f"true {true_name}, predicted {guess_name}",
                 f"explains {guess_name}, logit {score:.4g} ({name})"]
        stem = f"{shipped.noun}_{i:02d}_true{_slug(true_name)}_pred{_slug(guess_name)}" \
            if shipped.name == "digits" else \
            f"{shipped.name}_{i:02d}_true-{_slug(true_name)}_pred-{_slug(guess_name)}"
        written.append(save(figure(heat, relevance, label, args), out / f"{stem}.png"))
        inputs.append(Image.fromarray(prep.denormalize(x[i])).resize((128, 128), NEAREST))
        heats.append(heat.resize((128, 128), NEAREST))
        truths.append(f"true {true_name}")
        captions.append(f"pred {guess_name}")
    board = grid(inputs + heats, labels=truths + captions, ncols=len(x), pad=4)
    written.append(save(board, out / "grid.png"))
    correct = int((pred == labels).sum())
    for path in written:
        print(f"wrote {path}")
    print(f"explained {len(x)} held-out {shipped.noun}s with {name}; "
          f"predicted {correct}/{len(x)} correctly")
    info = shipped.info()
    print(f"model: {shipped.title}, held-out test accuracy {info['accuracy']:.4f} "
          f"({info.get('n_test', '?')} {shipped.noun}s)")
    if explanation.audit is not None and not explanation.audit.ok:
        print(f"lrp: warning: {explanation.audit}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add the subcommand to the ``lrp`` parser's subparsers."""
    from ..demo import MODELS

    demo = sub.add_parser("demo", help="explain held-out samples with a shipped model",
                          description="Explain held-out samples with a model that ships with "
                                      "the package: handwritten digits (digits) or "
                                      "Fashion-MNIST product photos (fashion); no download.")
    demo.add_argument("--model", default="digits", metavar="NAME",
                      help="shipped model: " + ", ".join(MODELS) + " (default: %(default)s)")
    demo.add_argument("--out", default="lrp-demo", metavar="DIR",
                      help="output directory (default: %(default)s)")
    demo.add_argument("--composite", default=None, metavar="NAME",
                      help="rule preset: " + ", ".join(COMPOSITES) + " (default: the model's "
                           "own: " + ", ".join(f"{m.composite} for {m.name}"
                                               for m in MODELS.values()) + ")")
    demo.add_argument("-n", type=int, default=10, help="number of held-out samples, 1-60; the "
                                                       "classes cycle (default: %(default)s)")
    demo.add_argument("--cmap", default="bwr", help="colormap (default: %(default)s)")
    add_figure_options(demo)
    demo.set_defaults(func=run)
