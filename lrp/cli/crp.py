"""``lrp crp``: concept relevance propagation over a dataset.

``lrp crp collect DATA --model SPEC --layer L --store DIR`` finds the reference
samples of every concept of the layers (relevance and activation maximization,
:func:`lrp.crp.collect_references`), resumably, in one process or under ``torchrun``.
``lrp crp atlas IMAGE DATA --model SPEC --store DIR --layer L`` draws the concept
atlas of one image from a finished reference store, without collecting again.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import (CLIError, add_model_options, check_cmap, check_composite, check_images,
                     model_and_composite, open_image, scripted_check)
from .datasets import (add_data_options, check_sizes, error_line, is_main, load_dataset,
                       parse_target, process_group)


def _model_and_composite(args: argparse.Namespace):
    check_composite(args.composite)
    loaded, prep, composite = model_and_composite(args)
    scripted_check(loaded, composite)
    return loaded, prep, composite


def collect(args: argparse.Namespace) -> int:
    """``lrp crp collect``."""
    from torch.utils.data import DataLoader

    from ..crp import collect_references

    check_sizes(args)
    target = parse_target(args.target)
    if args.n < 1:
        raise CLIError("-n must be at least 1")
    loaded, prep, composite = _model_and_composite(args)
    dataset, _, key = load_dataset(args.data, prep)
    with process_group(args.device, args.timeout) as device:
        model = loaded.model.to(device)
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
        start = time.perf_counter()
        try:
            refs = collect_references(model, loader, composite, args.layer, n=args.n,
                                      target=target, store=args.store,
                                      data_key=args.data_key or key,
                                      checkpoint_every=args.checkpoint_every,
                                      overwrite=args.overwrite)
        except (ValueError, TypeError, RuntimeError, OSError, KeyError) as err:
            raise CLIError(error_line(err)) from None
        elapsed = time.perf_counter() - start
        if not is_main():
            return 0
        earlier = len(dataset) - refs.computed
        print(f"references of {len(dataset)} samples: {refs.computed} computed in {elapsed:.1f} s "
              f"({refs.computed / elapsed:.1f} samples/s)"
              + (f", {earlier} by an earlier run" if earlier else "") + f" -> {refs.path}")
        for layer in refs.layers:
            idx = refs.indices["relevance"][layer]
            print(f"{layer}: {idx.shape[0]} concepts, {refs.n} references each; concept 0: "
                  f"samples {idx[0][idx[0] >= 0].tolist()}")
    return 0


def atlas(args: argparse.Namespace) -> int:
    """``lrp crp atlas``."""
    from ..crp import References, concept_atlas
    from ..data.store import Store, model_digest

    check_images([args.image])
    check_cmap(args.cmap)
    loaded, prep, composite = _model_and_composite(args)
    try:
        refs = References.load(args.store)
        manifest = Store.open(args.store, "references").manifest
    except (OSError, ValueError) as err:
        raise CLIError(error_line(err)) from None
    if args.layer not in refs.layers:
        raise CLIError(f"the store has references for {', '.join(refs.layers)}, not "
                       f"{args.layer!r}")
    if manifest.get("model") != model_digest(loaded.model):
        raise CLIError(f"{args.store} was collected with other model weights than {args.model}")
    dataset, classes, _ = load_dataset(args.data, prep)
    if len(dataset) != manifest["size"]:
        raise CLIError(f"{args.data} has {len(dataset)} samples, the store indexes "
                       f"{manifest['size']}: not the collected data")
    x = prep(open_image(args.image))
    try:
        concept_atlas(loaded.model, x, composite, args.layer, refs, dataset, k=args.concepts,
                      n_refs=args.refs, mean=prep.mean, std=prep.std, cmap=args.cmap,
                      path=args.out)
    except (ValueError, RuntimeError) as err:
        raise CLIError(error_line(err)) from None
    print(f"{args.image}: concept atlas of {args.layer} -> {args.out}")
    return 0


def register(sub) -> None:
    """Add ``lrp crp collect`` and ``lrp crp atlas`` to the ``lrp`` parser's subparsers."""
    crp = sub.add_parser("crp", help="concept relevance propagation over a dataset",
                         description="Concept relevance propagation over a dataset.")
    commands = crp.add_subparsers(dest="crp_command", metavar="COMMAND")
    commands.required = True
    col = commands.add_parser("collect", help="reference samples of every concept",
                              description="Relevance and activation maximization: the "
                                          "reference samples of every concept of some layers, "
                                          "into a store (resumable; the same command runs "
                                          "under torchrun on several processes).")
    add_data_options(col)
    add_model_options(col)
    col.add_argument("--layer", action="append", required=True, metavar="NAME",
                     help="layer whose concepts (channels) get references (repeatable)")
    col.add_argument("-n", type=int, default=8, help="references per concept (default: 8)")
    col.set_defaults(func=collect)

    at = commands.add_parser("atlas", help="concept atlas of an image from a reference store",
                             description="Explain one image through the top concepts of a "
                                         "layer, with their reference samples from a store "
                                         "written by 'lrp crp collect' (nothing is collected "
                                         "again).")
    at.add_argument("image", metavar="IMAGE")
    at.add_argument("data", metavar="DATA", help="the data the references were collected on")
    at.add_argument("--store", required=True, metavar="DIR", help="reference store")
    add_model_options(at)
    at.add_argument("--layer", required=True, metavar="NAME")
    at.add_argument("--concepts", type=int, default=4, help="top concepts shown (default: 4)")
    at.add_argument("--refs", type=int, default=5, help="references per concept (default: 5)")
    at.add_argument("--cmap", default="bwr")
    at.add_argument("--out", default="concept-atlas.png", type=Path, metavar="PNG",
                    help="output file (default: %(default)s)")
    at.set_defaults(func=atlas)
