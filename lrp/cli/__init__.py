"""The ``lrp`` command line (also ``python -m lrp``), one module per subcommand.

Subcommands::

    lrp demo [--out DIR] [--composite NAME] [-n N]
    lrp heatmap IMAGE... --model SPEC [--method NAME] [--composite NAME] [--target INT] [--out DIR]
                [--class-names NAMES]
                [--size H W] [--mean M...] [--std S...] [--grayscale] [--cmap NAME]
                [--low L] [--high H] [--overlay] [--clip-percentile P] [--no-canonize]
    lrp inspect --model SPEC [--composite NAME] [--size H W] [--grayscale]

A model ``SPEC`` is one of

* ``demo``: the shipped digits CNN (:mod:`lrp.demo`), with its own preprocessing
  (grayscale, 32x32, bright digit on dark background: dark-on-light images are
  inverted automatically),
* ``torchvision:ARCH`` or ``torchvision:ARCH:WEIGHTS.pth``: a classification
  architecture of ``torchvision.models`` built with ``weights=None``, then the
  optional ``state_dict`` file loaded (nothing is ever downloaded),
* a TorchScript file ``*.pt`` / ``*.pth`` (``torch.jit.load``); LRP rules attach as
  forward hooks, which TorchScript modules do not support, so these models can
  only be explained with ``--composite gradient``,
* ``package.module:factory``: imported (the current directory is searched too) and
  called without arguments; it must return an ``nn.Module``.

Composite names are the presets of :mod:`lrp.composites` in any case, with or
without dashes (``epsilon-gamma-box``, ``EpsilonGammaBox``, ...), and ``gradient``
(gradient x input).  Unless ``--no-canonize`` is given, BatchNorm layers are fused
into the preceding convolution (:class:`lrp.canonizers.MergeBatchNorm`).

``--method`` picks the attribution method: ``lrp`` (default, with ``--composite``),
``deeplift`` (Rescale, zero reference), ``gradient``, ``smoothgrad`` (32 noisy copies),
``integrated-gradients`` (32 steps, zero baseline), ``lime`` or ``kernel-shap``
(1000 coalitions of an 8x8 grid of cells, absent cells zero, seed 0).
``--class-names`` (a file with one name per line, or comma-separated names) labels
the printed classes.

Images other than for the demo model are converted to RGB (or grayscale with
``--grayscale``), resized to ``--size`` (default 224x224) with a bilinear filter,
scaled to ``[0, 1]`` and normalized with ``--mean`` / ``--std`` (default: the
ImageNet statistics).  Errors the user can fix (missing images, unknown names,
missing files) print one line on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import demo, heatmap, inspect
from .common import (COMPOSITES, IMAGENET_MEAN, IMAGENET_STD, METHODS, CLIError,
                     Preprocessing, composite_name, load_model, make_composite)

__all__ = ["main", "build_parser", "CLIError", "COMPOSITES", "METHODS", "make_composite",
           "composite_name", "load_model", "Preprocessing", "IMAGENET_MEAN", "IMAGENET_STD"]

#: The subcommand modules, in the order ``lrp --help`` lists them; each has
#: ``register(subparsers)`` and ``run(args) -> int``.
COMMANDS = (demo, heatmap, inspect)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lrp`` command."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="lrp", description="Layer-wise Relevance Propagation heatmaps for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"lrp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``lrp`` command line.

    Parameters
    ----------
    argv
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 on success, 2 for usage errors.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"lrp: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lrp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
