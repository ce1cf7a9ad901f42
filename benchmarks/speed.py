"""Speed of LRP relative to a plain input-gradient pass, measured in one run.

    python benchmarks/speed.py [--models vgg16 resnet50] [--batch 8] [--repeats 5]

For each model the plain gradient pass (forward + ``autograd.grad`` to the input)
and each composite are timed on the same batch after a warm-up.  Each repeat times
the gradient pass and the method back to back, and the ratio of the pair is taken,
so that load changes on the machine cancel; the table gives the median seconds and
the median of the paired ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from lrp import explain
from lrp.canonizers import MergeBatchNorm
from lrp.composites import (AvgPooling, BatchNorm, Composite, Convolution, Dense,
                            EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat,
                            FirstLayerTypeMap, GlobalTypeMap, Linear)
from lrp.rules import Epsilon, Gamma, Norm, Pass, ZBox


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def peak_mb(fn) -> float:
    """Peak resident-set increase (MiB, Linux) while ``fn()`` runs: the peak is reset
    just before it, and measured from the resident set at that moment."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mb("VmRSS")
    fn()
    return _status_mb("VmHWM") - before


def paired(base, method, repeats: int):
    """Median seconds of ``method`` and median ratio to ``base`` over paired repeats."""
    base()
    method()  # warm-up
    times, ratios = [], []
    for _ in range(repeats):
        b = _time(base)
        m = _time(method)
        times.append(m)
        ratios.append(m / b)
    return statistics.median(times), statistics.median(ratios)


def gradient_pass(model, x, target):
    def run():
        xg = x.detach().requires_grad_(True)
        out = model(xg)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
    return run


def baseline(name: str, batch: int, size: int, repeats: int, width: int):
    """torchvision's ``name`` (random weights, eval), a random batch, its predicted
    classes and the plain gradient pass; prints the gradient pass's row (method
    column ``width`` wide) and returns ``(model, x, target, base)``."""
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        target = model(x).argmax(1)
    base = gradient_pass(model, x, target)
    seconds, _ = paired(base, base, repeats)
    print(f"{name:<10} {'gradient':<{width}} {seconds:8.3f} {1.0:6.2f}", flush=True)
    return model, x, target, base


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
        # the published Gamma on convolutions (as Zennit): faster on ResNets, but its
        # denominators cross zero on residual branches
        "EGB, plain Gamma": lambda: Composite(
            GlobalTypeMap([(Convolution, Gamma(0.25)), (Dense, Epsilon(1e-6)),
                           (AvgPooling, Norm()), (BatchNorm, Pass())]),
            FirstLayerTypeMap([(Linear, ZBox(-3.0, 3.0))]), name="EGB, plain Gamma"),
        "EpsilonPlusFlat": lambda: EpsilonPlusFlat(),
        "EpsilonAlpha2Beta1": lambda: EpsilonAlpha2Beta1(),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"median of {args.repeats}")
    print(f"{'model':<10} {'method':<22} {'seconds':>8} {'ratio':>6}")
    for name in args.models:
        model, x, target, base = baseline(name, args.batch, args.size, args.repeats, 22)
        for label, make in composites.items():
            composite = make()
            composite.canonizers = [MergeBatchNorm()]
            for audit in ("off", "warn"):
                seconds, ratio = paired(
                    base, lambda: explain(model, x, composite, target, audit=audit), args.repeats)
                print(f"{name:<10} {label + ('' if audit == 'off' else ' +audit'):<22} "
                      f"{seconds:8.3f} {ratio:6.2f}", flush=True)


if __name__ == "__main__":
    main()
