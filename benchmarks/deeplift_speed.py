"""Speed of DeepLift relative to a plain input-gradient pass, measured in one run.

    python benchmarks/deeplift_speed.py [--models vgg16] [--batch 8] [--repeats 5]
                                        [--rules rescale] [--profile]

For each model (torchvision, ``weights=None``, eval mode) the plain gradient pass
(forward + ``torch.autograd.grad`` to the input) and DeepLift with a zero reference
are timed on the same batch after a warm-up, as paired repeats (see
``benchmarks/speed.py``, whose helpers this reuses): the table gives the median
seconds and the median of the paired ratios DeepLift / gradient, with and without
the coverage audit.  ``--profile`` prints where DeepLift's time goes
(``torch.profiler``, CPU, operators by total time).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import baseline, paired  # noqa: E402

from lrp.deeplift import deeplift  # noqa: E402


def profile(model, x, target, rule: str, rows: int = 20) -> None:
    """Print the operators taking DeepLift's time, by total CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        deeplift(model, x, target, rule=rule, audit="off")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16"])
    parser.add_argument("--rules", nargs="+", default=["rescale"],
                        choices=["rescale", "reveal_cancel"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{args.size}x{args.size}, median of {args.repeats} paired repeats")
    print(f"{'model':<10} {'method':<30} {'seconds':>8} {'ratio':>6}")
    for name in args.models:
        model, x, target, base = baseline(name, args.batch, args.size, args.repeats, 30)
        for rule in args.rules:
            for audit in ("off", "warn"):
                seconds, ratio = paired(
                    base, lambda: deeplift(model, x, target, rule=rule, audit=audit),
                    args.repeats)
                label = f"DeepLift({rule})" + (" +audit" if audit != "off" else "")
                print(f"{name:<10} {label:<30} {seconds:8.3f} {ratio:6.2f}", flush=True)
            if args.profile:
                profile(model, x, target, rule)


if __name__ == "__main__":
    main()
