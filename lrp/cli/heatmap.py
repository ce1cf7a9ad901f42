"""``lrp heatmap``: one heatmap PNG per image."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

from .common import (METHODS, CLIError, add_figure_options, add_model_options, blank_notice,
                     bounds_and_composite, check_cmap, check_images, check_out, class_label,
                     check_composite, figure, load_model, model_composite, notice, preprocessing,
                     read_class_names, scripted_check, unique_stem)
from .datasets import expand_images, explained_images


def run(args: argparse.Namespace) -> int:
    """``lrp heatmap``: one heatmap PNG per image."""
    from tqdm import tqdm

    from ..image import heatmap, overlay, save

    images = expand_images(args.images)
    check_images(images)
    check_cmap(args.cmap)
    check_composite(args.composite)
    if args.method not in METHODS:
        raise CLIError(f"unknown method {args.method!r}; valid: {', '.join(METHODS)}")
    out = check_out(args.out)
    class_names = read_class_names(args.class_names)
    loaded = load_model(args.model)
    model_composite(args, loaded)
    if loaded.notice:
        notice(loaded.notice)
    prep = preprocessing(args, loaded)
    composite = bounds_and_composite(args, prep)
    if args.method == "lrp":
        scripted_check(loaded, composite)
    elif args.method == "deeplift" and loaded.scripted:
        raise CLIError(f"{loaded.description}: DeepLift needs module hooks, which TorchScript "
                       "modules do not have")
    names = class_names if class_names is not None else loaded.class_names
    method = composite.name if args.method == "lrp" and composite is not None else (
        "gradient x input" if args.method == "lrp" else args.method)
    seen: Dict[str, int] = {}
    warned = False
    for path, x, explanation in explained_images(
            images, prep, loaded.model, composite, args.target,
            "off" if loaded.scripted else "warn", args.method, args.batch_size, args.workers):
        if not warned and explanation.audit is not None and not explanation.audit.ok:
            tqdm.write(f"lrp: warning: {explanation.audit}", file=sys.stderr)
            warned = True
        if class_names is not None and len(class_names) != explanation.output.shape[-1]:
            raise CLIError(f"got {len(class_names)} output names for a model with "
                           f"{explanation.output.shape[-1]} outputs")
        stem = unique_stem(path, seen)
        relevance = explanation.relevance[0]
        target = int(explanation.target[0])
        score = float(explanation.output[0, target])
        predicted = int(explanation.output[0].argmax())
        blank = blank_notice(path, explanation.output[0], relevance)
        if blank:
            tqdm.write(f"lrp: notice: {blank}", file=sys.stderr)
        label = [f"{Path(path).name}: predicted {class_label(predicted, names)}",
                 f"explains {class_label(target, names)}, logit {score:.4g} ({method})"]
        clip = args.clip_percentile
        files = [save(figure(heatmap(relevance, args.cmap, clip_percentile=clip), relevance,
                             label, args, clip), out / f"{stem}_heatmap.png")]
        if args.overlay:
            image = overlay(relevance, prep.denormalize(x[0]), cmap=args.cmap, clip_percentile=clip)
            files.append(save(figure(image, relevance, label, args, clip),
                              out / f"{stem}_overlay.png"))
        tqdm.write(f"{path}: class {class_label(target, names)} (logit {score:.3f}, predicted "
                   f"{class_label(predicted, names)}) -> " + ", ".join(str(f) for f in files))
    return 0


def register(sub) -> None:
    """Add the subcommand to the ``lrp`` parser's subparsers."""
    heat = sub.add_parser("heatmap", help="write a heatmap PNG per image",
                          description="Explain images with a model and write one heatmap PNG "
                                      "per image (IMAGE_heatmap.png).")
    heat.add_argument("images", nargs="+", metavar="IMAGE",
                      help="image files, or folders (every image below them)")
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
                      help="also write the heatmap blended over the input (IMAGE_overlay.png); "
                           "each pixel's opacity follows its |relevance|")
    heat.add_argument("--clip-percentile", type=float, default=None, metavar="P",
                      help="clip |relevance| at this percentile before coloring, e.g. 99.5")
    heat.add_argument("--batch-size", type=int, default=16, metavar="B",
                      help="images explained together (default: %(default)s)")
    heat.add_argument("--workers", type=int, default=0, metavar="W",
                      help="DataLoader processes that read the images (default: %(default)s)")
    add_figure_options(heat)
    heat.set_defaults(func=run)
