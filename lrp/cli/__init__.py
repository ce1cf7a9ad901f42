"""The ``lrp`` command line (also ``python -m lrp``), one module per subcommand.

Subcommands::

    lrp demo [--model digits|fashion] [--out DIR] [--composite NAME] [-n N]
             [--no-label] [--no-colorbar]
    lrp heatmap IMAGE... --model SPEC [--method NAME] [--composite NAME] [--target INT] [--out DIR]
                [--class-names NAMES]
                [--size H W] [--mean M...] [--std S...] [--grayscale] [--cmap NAME]
                [--low L] [--high H] [--overlay] [--clip-percentile P] [--no-canonize]
                [--no-label] [--no-colorbar]
    lrp inspect --model SPEC [--composite NAME] [--size H W] [--grayscale]
    lrp evaluate --model SPEC [--images DIR] [-n N] [--methods A,B] [--metrics A,B] [--out DIR]
    lrp attribute-dataset DATA --model SPEC --store DIR [--method NAME] [--target T]
                [--batch-size B] [--workers W] [--device DEV] [--class-means] [--concepts L:IDS]
    lrp crp collect DATA --model SPEC --layer NAME --store DIR [-n N] [--target T] ...
    lrp crp atlas IMAGE DATA --model SPEC --store DIR --layer NAME [--out PNG]
    lrp text TEXT --model DIR [--composite attn-lrp|cp-lrp|gradient] [--target ID_OR_TOKEN]
             [--contrast ID_OR_TOKEN] [--position N] [--merge-words] [--out DIR]
             [--cmap NAME] [--font TTF]

``DATA`` is an image folder (one subfolder per class) or ``package.module:factory``
returning a dataset (see :mod:`lrp.cli.datasets`); started by ``torchrun``, the
dataset commands share the work between its processes.

A model ``SPEC`` is one of

* a shipped model of :mod:`lrp.demo`: ``digits`` (also ``demo``, the digits CNN) or
  ``fashion`` (the Fashion-MNIST CNN), with its own preprocessing (grayscale, bright
  object on dark background: dark-on-light images are inverted automatically) and
  class names,
* ``torchvision:ARCH`` or ``torchvision:ARCH:WEIGHTS.pth``: a classification
  architecture of ``torchvision.models`` built with ``weights=None``, then the
  optional ``state_dict`` file loaded (nothing is ever downloaded); without a
  weights file the weights are random, initialised with seed 0, and a notice says so,
* a TorchScript file ``*.pt`` / ``*.pth`` (``torch.jit.load``); LRP rules attach as
  forward hooks, which TorchScript modules do not support, so these models can
  only be explained with ``--composite gradient``,
* ``package.module:factory``: imported (the current directory is searched too) and
  called without arguments; it must return an ``nn.Module``.

``lrp text`` explains a text with a Hugging Face causal language model or sequence
classifier saved with ``save_pretrained`` (model and tokenizer in ``DIR``; see
:mod:`lrp.cli.text`): it prints the tokens coloured by relevance and writes
``tokens.html`` and ``tokens.png``.

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

Images other than for the shipped models are converted to RGB (or grayscale with
``--grayscale``), resized to ``--size`` (default 224x224) with a bilinear filter,
scaled to ``[0, 1]`` (16-bit grayscale by its bit depth) and normalized with
``--mean`` / ``--std`` (default: the ImageNet statistics).

Every single-image PNG carries a label (the image, the predicted and the explained
class with its logit, the method) and a colour bar with the value scale;
``--no-label`` and ``--no-colorbar`` turn them off.  ``--overlay`` blends the heatmap
over the input with an opacity that follows ``|R|``.  ``--out`` must be a directory
that can be written; this is checked before any model runs.  Errors the user can
fix (missing images, unknown names, missing files) print one line on stderr and exit
with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import attribute_dataset, crp, demo, evaluate, heatmap, inspect, text
from .common import (COMPOSITES, IMAGENET_MEAN, IMAGENET_STD, METHODS, CLIError,
                     Preprocessing, composite_name, load_model, make_composite)

__all__ = ["main", "build_parser", "CLIError", "COMPOSITES", "METHODS", "make_composite",
           "composite_name", "load_model", "Preprocessing", "IMAGENET_MEAN", "IMAGENET_STD"]

#: The subcommand modules, in the order ``lrp --help`` lists them; each has
#: ``register(subparsers)`` and ``run(args) -> int``.
COMMANDS = (demo, heatmap, inspect, evaluate, attribute_dataset, crp, text)


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
