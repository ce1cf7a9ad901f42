"""``lrp attribute-dataset``: explain every sample of a dataset into a store.

One process by default; under ``torchrun --nproc_per_node N`` the same command runs
on N processes that share the work (see :mod:`lrp.data`).
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from .common import (METHOD_CALLS, METHODS, CLIError, add_model_options, check_cmap,
                     check_composite, enlarge, model_and_composite, scripted_check)
from .datasets import (add_data_options, check_sizes, error_line, is_main, load_dataset,
                       parse_target, process_group)

_IDS = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def parse_concepts(specs) -> list[dict[str, list[int]]] | None:
    """``--concepts LAYER:IDS`` (ids ``3``, ``0-7``, ``1,4,9``): one CRP condition per id."""
    if not specs:
        return None
    conditions = []
    for spec in specs:
        layer, _, ids = spec.rpartition(":")
        if not layer or not _IDS.match(ids):
            raise CLIError(f"--concepts expects LAYER:IDS such as features.8:0-7 or "
                           f"features.8:1,4,9, got {spec!r}")
        for part in ids.split(","):
            lo, _, hi = part.partition("-")
            for c in range(int(lo), int(hi or lo) + 1):
                conditions.append({layer: [c]})
    return conditions


def run(args: argparse.Namespace) -> int:
    """``lrp attribute-dataset``."""
    from ..data import attribute_dataset

    check_sizes(args)
    check_cmap(args.cmap)
    target = parse_target(args.target)
    check_composite(args.composite)
    if args.method not in METHODS:
        raise CLIError(f"unknown method {args.method!r}; valid: {', '.join(METHODS)}")
    conditions = parse_concepts(args.concepts)
    if conditions is not None and args.method != "lrp":
        raise CLIError("--concepts (CRP) needs --method lrp")
    loaded, prep, composite = model_and_composite(args)
    if args.method == "lrp":
        scripted_check(loaded, composite)
        if conditions is not None and composite is None:
            raise CLIError("--concepts (CRP) needs an LRP composite, not gradient")
        method, options = composite, {}
    else:
        method, options = METHOD_CALLS[args.method]
    dataset, classes, key = load_dataset(args.data, prep)
    with process_group(args.device, args.timeout) as device:
        model = loaded.model.to(device)
        start = time.perf_counter()
        try:
            store = attribute_dataset(model, dataset, method, args.store, target=target,
                                      conditions=conditions, options=options,
                                      batch_size=args.batch_size, workers=args.workers,
                                      checkpoint_every=args.checkpoint_every,
                                      data_key=args.data_key or key, overwrite=args.overwrite)
        except (ValueError, TypeError, RuntimeError, OSError, KeyError) as err:
            raise CLIError(error_line(err)) from None
        elapsed = time.perf_counter() - start
        if not is_main():
            return 0
        earlier = store.size - store.computed
        print(f"{store.computed} samples explained in {elapsed:.1f} s "
              f"({store.computed / elapsed:.1f} samples/s)"
              + (f", {earlier} by an earlier run" if earlier else "")
              + f" -> {store.path} (relevance {store.relevance.shape[1:]} per sample)")
        if args.class_means:
            write_class_means(store, classes, Path(store.path) / "class-means", args.cmap)
    return 0


def write_class_means(store, classes, out: Path, cmap: str) -> None:
    """Per-class mean heatmaps (by label) as PNGs, read from the store."""
    from ..image import save

    if store.label is None:
        raise CLIError("--class-means needs labelled data (one subfolder per class)")
    conditions = [None] if store.settings.get("method") != "crp" else \
        list(range(store.relevance.shape[1]))
    for condition in conditions:
        images = store.mean_heatmaps("label", condition, cmap=cmap)
        for cls, image in images.items():
            name = classes[cls] if classes is not None and 0 <= cls < len(classes) else str(cls)
            suffix = "" if condition is None else f"_condition{condition}"
            print(f"class {name}: {save(enlarge(image), out / f'{name}{suffix}.png')}")


def register(sub) -> None:
    """Add the subcommand to the ``lrp`` parser's subparsers."""
    cmd = sub.add_parser("attribute-dataset", help="explain a whole dataset into a store",
                         description="Explain every sample of an image folder or dataset into "
                                     "a store (resumable; the same command runs under torchrun "
                                     "on several processes).")
    add_data_options(cmd)
    add_model_options(cmd)
    cmd.add_argument("--method", default="lrp", metavar="NAME",
                     help="attribution method: " + ", ".join(METHODS) + " (default: "
                          "%(default)s, with --composite)")
    cmd.add_argument("--concepts", action="append", metavar="LAYER:IDS",
                     help="CRP: one conditional heatmap per concept id, e.g. features.8:0-7 "
                          "(repeatable)")
    cmd.add_argument("--class-means", action="store_true",
                     help="also write the mean heatmap of each class to STORE/class-means/")
    cmd.add_argument("--cmap", default="bwr", help="colormap of --class-means (default: bwr)")
    cmd.set_defaults(func=run)
