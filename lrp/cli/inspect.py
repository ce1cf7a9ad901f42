"""``lrp inspect``: the rule tree and the coverage audit."""
from __future__ import annotations

import argparse
import warnings

import torch

from .common import (CLIError, add_model_options, check_composite, first_line,
                     model_and_composite, run_explanation, scripted_check)


def run(args: argparse.Namespace) -> int:
    """``lrp inspect``: the rule tree and the coverage audit."""
    from ..composites import Composite

    check_composite(args.composite)
    loaded, prep, composite = model_and_composite(args)
    scripted_check(loaded, composite)
    shown = composite if composite is not None else Composite(name="GradientXInput")
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, prep.channels, *prep.size, generator=generator)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    print(f"model: {loaded.description}, {n_params:,} parameters")
    print(f"composite: {shown.name}"
          + (f", canonizers: {', '.join(type(c).__name__ for c in shown.canonizers)}"
             if shown.canonizers else ""))
    print(f"example input: random normal {tuple(example.shape)}")
    print()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = shown.tree(loaded.model, example)
    except RuntimeError as err:
        raise CLIError(f"the model failed on an input of shape {tuple(example.shape)}: "
                       f"{first_line(err)}") from None
    print(tree)
    print()
    if loaded.scripted:
        print("coverage audit: not available for TorchScript models")
        return 0
    explanation = run_explanation(loaded.model, example, composite, None, "warn")
    print(str(explanation.audit))
    return 0


def register(sub) -> None:
    """Add the subcommand to the ``lrp`` parser's subparsers."""
    inspect = sub.add_parser("inspect", help="print the rule of every layer and the audit",
                             description="Print the composite's rule for every module of the "
                                         "model and the coverage audit of one explanation.")
    add_model_options(inspect)
    inspect.set_defaults(func=run)
