"""``lrp evaluate``: compare attribution methods with explanation-quality metrics.

Every preset composite, gradient x input, Integrated Gradients, DeepLift, SmoothGrad
and a random baseline are evaluated on the same inputs with the same perturbations
(:func:`lrp.evaluate.compare`).  The table is printed and written as Markdown and CSV,
with a PNG of the mean MoRF/LeRF perturbation curves.

Shipped models come with held-out data (:data:`SHIPPED_DATA`); any other model needs
``--images DIR`` (every image in the folder, explained for its predicted class).
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .common import (COMPOSITES, CLIError, check_images, load_model, make_composite,
                     open_image, preprocessing, run_method)

@dataclass
class ShippedData:
    """What ``lrp evaluate`` needs of a shipped model: ``inputs(n) -> (x, labels)``, the
    input bounds ``low``/``high`` (for epsilon-gamma-box) and ``n_samples``."""

    inputs: Callable[[int], Tuple[Tensor, Tensor]]
    low: Union[float, Tensor]
    high: Union[float, Tensor]
    n_samples: int


def _digits() -> ShippedData:
    import numpy as np

    from .. import demo
    with np.load(demo.SAMPLES) as data:
        n_samples = len(data["labels"])
    return ShippedData(demo.demo_inputs, demo.LOW, demo.HIGH, n_samples)


#: Model specs that ship their own held-out data: spec -> a function returning it
#: (anything with the attributes of :class:`ShippedData`).
SHIPPED_DATA: Dict[str, Callable[[], ShippedData]] = {
    "demo": _digits,
}

#: The methods of ``lrp evaluate`` (besides every preset composite of COMPOSITES).
OTHER_METHODS = ("gradient-x-input", "integrated-gradients", "deeplift", "smoothgrad", "random")
#: Metrics computed unless ``--metrics`` is given.
DEFAULT_METRICS = ("AOPC-MoRF", "AOPC-LeRF", "ABPC", "FaithfulnessCorrelation", "ROAD-MoRF",
                   "Sparseness", "Complexity", "MPRT")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def method_names() -> Tuple[str, ...]:
    """Every method name ``lrp evaluate`` knows, in table order."""
    return tuple(n for n in COMPOSITES if COMPOSITES[n] is not None) + OTHER_METHODS


def methods(names, low, high, canonize: bool = True, seed: int = 0) -> Dict[str, object]:
    """Name -> composite or method (``method(model, x, target=...)``) for ``names``.

    The preset composites are built by :func:`lrp.cli.common.make_composite` (with
    ``low``/``high`` for epsilon-gamma-box); Integrated Gradients, DeepLift and
    SmoothGrad run exactly as ``lrp heatmap --method`` does
    (:func:`lrp.cli.common.run_method`).
    """
    from .. import gradients
    from ..evaluate import random_method

    chosen: Dict[str, object] = {}
    for name in names:
        if name in COMPOSITES and COMPOSITES[name] is not None:
            chosen[name] = make_composite(name, low=low, high=high, canonize=canonize)
        elif name == "gradient-x-input":
            chosen[name] = gradients.gradient_x_input
        elif name == "random":
            chosen[name] = random_method(seed)
        elif name in OTHER_METHODS:
            chosen[name] = partial(_library_method, name)
        else:
            raise CLIError(f"unknown method {name!r}; valid: {', '.join(method_names())}")
    return chosen


def _library_method(name: str, model: nn.Module, x: Tensor, target=None):
    return run_method(name, model, x, target)


def _shipped(spec: str, n: Optional[int]):
    data = SHIPPED_DATA[spec]()
    n = data.n_samples if n is None else n
    if not 1 <= n <= data.n_samples:
        raise CLIError(f"-n must be between 1 and {data.n_samples} for --model {spec}, got {n}")
    x, labels = data.inputs(n)
    return x, labels, data.low, data.high


def _folder(folder: str, n: Optional[int], prep) -> Tensor:
    path = Path(folder)
    if not path.is_dir():
        raise CLIError(f"--images {folder}: not a directory")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CLIError(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    files = files[:n] if n is not None else files
    check_images([str(f) for f in files])
    return torch.cat([prep(open_image(str(f))) for f in files])


def _patch_size(args, x: Tensor) -> int:
    if args.patch_size is not None:
        return args.patch_size
    side = min(x.shape[2:])
    return max(1, side // 8)


def run(args: argparse.Namespace) -> int:
    """``lrp evaluate``: compare methods, print the table, write Markdown, CSV and PNG."""
    from .. import evaluate
    from ..evaluate.features import FILLS, patch_sizes

    names = method_names() if args.methods is None else tuple(
        m.strip() for m in args.methods.split(",") if m.strip())
    metrics = DEFAULT_METRICS if args.metrics is None else tuple(
        m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in evaluate.METRICS]
    if unknown:
        raise CLIError(f"unknown metric {unknown[0]!r}; valid: {', '.join(evaluate.METRICS)}")
    if args.fill not in FILLS:
        raise CLIError(f"unknown fill {args.fill!r}; valid: {', '.join(FILLS)}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    loaded = load_model(args.model)
    if loaded.scripted:
        raise CLIError(f"{loaded.description}: TorchScript models have no module hooks; give the "
                       "model as torchvision:ARCH:WEIGHTS or package.module:factory")
    target: Optional[Tensor] = None
    if args.images is None:
        if args.model not in SHIPPED_DATA:
            raise CLIError(f"--model {args.model} needs --images DIR: only the shipped models "
                           f"({', '.join(SHIPPED_DATA)}) come with data to evaluate on")
        x, target, low, high = _shipped(args.model, args.n)
    else:
        if args.n is not None and args.n < 1:
            raise CLIError(f"-n must be >= 1, got {args.n}")
        prep = preprocessing(args, loaded)
        x = _folder(args.images, args.n, prep)
        lows, highs = prep.bounds()
        low, high = (float(lows.min()), float(highs.max()))
    chosen = methods(names, low, high, canonize=not args.no_canonize, seed=args.seed)
    options = {"pixel_flipping": {"patch_size": _patch_size(args, x), "fill": args.fill}}
    try:
        patch_sizes(options["pixel_flipping"]["patch_size"], x.shape[2:])
    except ValueError as err:
        raise CLIError(str(err)) from None
    total = len(chosen)
    counter = iter(range(1, total + 1))
    try:
        result = evaluate.compare(
            loaded.model, x, chosen, target, metrics=metrics, options=options, seed=args.seed,
            batch_size=args.batch_size,
            on_method=lambda name: print(f"evaluating {name} ({next(counter)}/{total})",
                                         file=sys.stderr))
    except (ValueError, TypeError) as err:
        raise CLIError(str(err).splitlines()[0]) from None
    except RuntimeError as err:
        raise CLIError(f"the model failed on inputs of shape {tuple(x.shape)}: "
                       f"{str(err).splitlines()[0]}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    patch = options["pixel_flipping"]["patch_size"]
    settings = (f"model `{args.model}`, {len(x)} inputs, patch size {patch}, "
                f"fill `{args.fill}`, seed {args.seed}")
    table = result.markdown()
    md = out / "evaluation.md"
    md.write_text(f"# lrp evaluate\n\n{settings}; mean ± standard error over the inputs, "
                  "↑ higher is better, ↓ lower is better.\n\n" + table)
    written = [md, result.to_csv(out / "evaluation.csv")]
    if {"AOPC-MoRF", "AOPC-LeRF", "ABPC"} & set(metrics):
        try:
            written.append(Path(out / "curves.png"))
            result.plot_curves(written[-1])
        except ImportError:
            written.pop()
            print("lrp: warning: matplotlib is not installed; no curves.png "
                  "(pip install 'lrp[plot]')", file=sys.stderr)
    print(settings)
    print(table)
    for path in written:
        print(f"wrote {path}")
    return 0


def register(sub) -> None:
    """Add the subcommand to the ``lrp`` parser's subparsers."""
    p = sub.add_parser("evaluate", help="compare methods with explanation-quality metrics",
                       description="Evaluate every preset composite, gradient x input, IG, "
                                   "DeepLift, SmoothGrad and a random baseline with "
                                   "faithfulness, randomization and complexity metrics; print "
                                   "the table and write evaluation.md, evaluation.csv and "
                                   "curves.png.")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="demo (ships its data) | torchvision:ARCH[:WEIGHTS.pth] | "
                        "package.module:factory (these need --images)")
    p.add_argument("--images", metavar="DIR", default=None,
                   help="folder of images to evaluate on (default: the shipped model's "
                        "held-out data)")
    p.add_argument("-n", type=int, default=None,
                   help="number of inputs (default: every shipped sample / every image)")
    p.add_argument("--methods", default=None, metavar="A,B,...",
                   help="comma-separated subset of: " + ", ".join(method_names()))
    p.add_argument("--metrics", default=None, metavar="A,B,...",
                   help="comma-separated metrics (default: " + ",".join(DEFAULT_METRICS) + ")")
    p.add_argument("--patch-size", type=int, default=None, metavar="P",
                   help="patch side for pixel-flipping (default: an eighth of the image side)")
    p.add_argument("--fill", default="min",
                   help="what replaces perturbed patches: min (black), uniform, blur, mean, zero "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of every perturbation "
                                                       "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="inputs per forward pass (default: %(default)s)")
    p.add_argument("--out", default="lrp-evaluate", metavar="DIR",
                   help="output directory (default: %(default)s)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size for --images (default 224 224)")
    p.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="per-channel normalization mean (default: ImageNet)")
    p.add_argument("--std", type=float, nargs="+", metavar="S",
                   help="per-channel normalization std (default: ImageNet)")
    p.add_argument("--grayscale", action="store_true", help="feed one grayscale channel")
    p.add_argument("--no-canonize", action="store_true",
                   help="do not fuse BatchNorm layers into the preceding convolutions")
    p.set_defaults(func=run)
