"""Speed of LRP relative to a plain input-gradient pass, measured in one run.

    python benchmarks/speed.py [--models vgg16 resnet50] [--batch 8] [--repeats 5]

For each model the plain gradient pass (forward + ``autograd.grad`` to the input)
and each composite are timed on the same batch, after a warm-up, as the median of
``--repeats`` runs; the table gives seconds and the ratio to the gradient pass.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from lrp import explain
from lrp.canonizers import MergeBatchNorm
from lrp.composites import (Composite, EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat,
                            GlobalTypeMap, Linear)
from lrp.rules import Epsilon


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gradient_pass(model, x, target):
    def run():
        xg = x.detach().requires_grad_(True)
        out = model(xg)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    composites = {
        "LRP-epsilon": lambda: Composite(GlobalTypeMap([(Linear, Epsilon(1e-6))]),
                                         name="LRP-epsilon"),
        "EpsilonGammaBox": lambda: EpsilonGammaBox(-3.0, 3.0),
        "EpsilonPlusFlat": lambda: EpsilonPlusFlat(),
        "EpsilonAlpha2Beta1": lambda: EpsilonAlpha2Beta1(),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"median of {args.repeats}")
    print(f"{'model':<10} {'method':<22} {'seconds':>8} {'ratio':>6}")
    for name in args.models:
        model = getattr(torchvision.models, name)(weights=None).eval()
        x = torch.randn(args.batch, 3, args.size, args.size)
        with torch.no_grad():
            target = model(x).argmax(1)
        base = median_time(gradient_pass(model, x, target), args.repeats)
        print(f"{name:<10} {'gradient':<22} {base:8.3f} {1.0:6.2f}")
        for label, make in composites.items():
            composite = make()
            composite.canonizers = [MergeBatchNorm()]
            for audit in ("off", "warn"):
                t = median_time(lambda: explain(model, x, composite, target, audit=audit),
                                args.repeats)
                print(f"{name:<10} {label + ('' if audit == 'off' else ' +audit'):<22} "
                      f"{t:8.3f} {t / base:6.2f}", flush=True)


if __name__ == "__main__":
    main()
