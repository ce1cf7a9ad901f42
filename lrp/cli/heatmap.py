"""``lrp heatmap``: one heatmap PNG per image."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

from .common import (METHODS, CLIError, add_model_options, bounds_and_composite, check_cmap,
                     check_images, class_label, composite_name, enlarge, load_model,
                     open_image, preprocessing, read_class_names, run_explanation,
                     scripted_check, unique_stem)


def run(args: argparse.Namespace) -> int:
    """``lrp heatmap``: one heatmap PNG per image."""
    from tqdm import tqdm

    from ..image import heatmap, overlay, save

    check_images(args.images)
    check_cmap(args.cmap)
    composite_name(args.composite)
    if args.method not in METHODS:
        raise CLIError(f"unknown method {args.method!r}; valid: {', '.join(METHODS)}")
    class_names = read_class_names(args.class_names)
    loaded = load_model(args.model)
    prep = preprocessing(args, loaded)
    composite = bounds_and_composite(args, prep)
    if args.method == "lrp":
        scripted_check(loaded, composite)
    elif args.method == "deeplift" and loaded.scripted:
        raise CLIError(f"{loaded.description}: DeepLift needs module hooks, which TorchScript "
                       "modules do not have")
    out = Path(args.out)
    seen: Dict[str, int] = {}
    warned = False
    for path in tqdm(args.images, desc="explaining", unit="image", disable=None):
        x = prep(open_image(path))
        explanation = run_explanation(loaded.model, x, composite, args.target,
                               "off" if loaded.scripted else "warn", args.method, class_names)
        if not warned and explanation.audit is not None and not explanation.audit.ok:
            tqdm.write(f"lrp: warning: {explanation.audit}", file=sys.stderr)
            warned = True
        stem = unique_stem(path, seen)
        relevance = explanation.relevance[0]
        files = [save(enlarge(heatmap(relevance, args.cmap,
                                       clip_percentile=args.clip_percentile)),
                      out / f"{stem}_heatmap.png")]
        if args.overlay:
            image = overlay(relevance, prep.denormalize(x[0]), cmap=args.cmap,
                            clip_percentile=args.clip_percentile)
            files.append(save(enlarge(image), out / f"{stem}_overlay.png"))
        target = int(explanation.target[0])
        score = float(explanation.output[0, target])
        predicted = int(explanation.output[0].argmax())
        tqdm.write(f"{path}: class {class_label(explanation, target)} (logit {score:.3f}, "
                   f"predicted {class_label(explanation, predicted)}) -> "
                   + ", ".join(str(f) for f in files))
    return 0


def register(sub) -> None:
    """Add the subcommand to the ``lrp`` parser's subparsers."""
    heat = sub.add_parser("heatmap", help="write a heatmap PNG per image",
                          description="Explain images with a model and write one heatmap PNG "
                                      "per image (IMAGE_heatmap.png).")
    heat.add_argument("images", nargs="+", metavar="IMAGE")
    add_model_options(heat)
    heat.add_argument("--method", default="lrp", metavar="NAME",
                      help="attribution method: " + ", ".join(METHODS) + " (default: "
                           "%(default)s, with --composite)")
    heat.add_argument("--target", type=int, default=None,
                      help="class to explain (default: the predicted class)")
    heat.add_argument("--class-names", default=None, metavar="NAMES",
                      help="names of the model's classes for the output: a text file with one "
                           "name per line, or names separated by commas")
    heat.add_argument("--out", default="lrp-heatmaps", metavar="DIR",
                      help="output directory (default: %(default)s)")
    heat.add_argument("--cmap", default="bwr",
                      help="colormap name or spec, e.g. bwr, coldnhot, hot, '00f,fff,f00' "
                           "(default: %(default)s)")
    heat.add_argument("--overlay", action="store_true",
                      help="also write the heatmap blended over the input (IMAGE_overlay.png)")
    heat.add_argument("--clip-percentile", type=float, default=None, metavar="P",
                      help="clip |relevance| at this percentile before coloring, e.g. 99.5")
    heat.set_defaults(func=run)
