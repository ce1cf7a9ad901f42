"""Speed of conditional heatmaps (CRP) relative to one LRP heatmap, measured in one run.

    python benchmarks/crp_speed.py [--composite EpsilonPlus] [--channels 8 32]
                                   [--batch-sizes 1 4] [--repeats 5] [--flops] [--profile]

On torchvision's VGG16 (random weights, eval, batch 1, 224x224) the conditional
heatmaps of the first ``C`` channels of ``features.28`` (the last convolution) are
computed with :func:`lrp.crp.attribute` and timed against one unconditional heatmap
(:func:`lrp.explain`, same composite), in paired repeats after a warm-up (see
``benchmarks/speed.py``): the table gives the median seconds and the median of the
paired ratios.  ``--batch-sizes`` compares concepts per batched (vmapped) backward
pass; 1 is one plain backward per concept.

``--flops`` counts the floating point operations (``torch.utils.flop_counter``) of
one heatmap, of the shared part (forward, backward to ``features.28``) and of the
backward of one concept from ``features.28`` to the input, and prints the floor
``(shared + C * per_concept) / heatmap`` that any scheme propagating ``C`` concepts
through the network's backward pass must pay.  ``--profile`` prints the operators
that take the time (``torch.profiler``) for the largest ``C``.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import paired  # noqa: E402

from lrp import explain  # noqa: E402
from lrp.composites import EpsilonGammaBox, EpsilonPlus  # noqa: E402
from lrp.crp import attribute  # noqa: E402
from lrp.crp.engine import capture  # noqa: E402

LAYER = "features.28"
COMPOSITES = {"EpsilonPlus": lambda: EpsilonPlus(),
              "EpsilonGammaBox": lambda: EpsilonGammaBox(-3.0, 3.0)}


class _Flops(TorchDispatchMode):
    """Counts FLOPs with ``torch.utils.flop_counter``'s formulas (convolutions, matrix
    products).  ``FlopCounterMode`` itself tracks modules with backward hooks, which
    ``torch.autograd.grad`` to a leaf does not support."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def flops(fn) -> int:
    """Floating point operations of ``fn()``."""
    with _Flops() as counter:
        fn()
    return counter.total


def flop_floor(model, x, composite, channels) -> None:
    """Print the FLOPs of a heatmap, the shared part and one concept's backward."""
    heatmap = flops(lambda: explain(model, x, composite, audit="off"))
    parts = {}

    def split():
        with capture(model, x, composite, [LAYER], audit="off") as fw:
            _, seed = fw.targets(None)
            parts["shared"] = flops(lambda: fw.grads(seed, [LAYER]))
            (g,) = fw.grads(seed, [LAYER])
            g = g.clone()
            g[:, 1:] = 0
            parts["concept"] = flops(lambda: fw.propagate(LAYER, g[None], batch_size=1))

    parts["forward"] = flops(split) - parts.get("shared", 0) - parts.get("concept", 0)
    shared = parts["forward"] + parts["shared"]
    print(f"GFLOP: heatmap {heatmap / 1e9:.1f}, shared forward + backward to {LAYER} "
          f"{shared / 1e9:.1f}, one concept {LAYER} -> input {parts['concept'] / 1e9:.1f}")
    for c in channels:
        print(f"  floor for {c:>3} channels: {(shared + c * parts['concept']) / heatmap:5.2f} "
              "heatmaps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--composite", choices=sorted(COMPOSITES), default="EpsilonPlus")
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--flops", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    composite = COMPOSITES[args.composite]()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, VGG16 "
          f"{args.size}x{args.size}, {args.composite}, {LAYER}, median of {args.repeats}")

    def heatmap():
        explain(model, x, composite, audit="off")

    seconds, _ = paired(heatmap, heatmap, args.repeats)
    print(f"{'one heatmap':<28} {seconds:8.3f} {1.0:6.2f}", flush=True)
    for c in args.channels:
        conditions = [{LAYER: [i]} for i in range(c)]
        for bs in args.batch_sizes:
            def crp():
                attribute(model, x, composite, conditions, audit="off", batch_size=bs)
            seconds, ratio = paired(heatmap, crp, args.repeats)
            print(f"{f'{c} channels, batch_size {bs}':<28} {seconds:8.3f} {ratio:6.2f}",
                  flush=True)
    if args.flops:
        flop_floor(model, x, composite, args.channels)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        conditions = [{LAYER: [i]} for i in range(max(args.channels))]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            attribute(model, x, composite, conditions, audit="off",
                      batch_size=args.batch_sizes[0])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
