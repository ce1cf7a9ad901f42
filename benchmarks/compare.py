"""Speed, peak memory and agreement of lrp against Zennit, zennit-crp and Captum.

    bash benchmarks/run.sh            # sets up benchmarks/.venv, then runs this file
    python benchmarks/compare.py [--models vgg16 resnet50 densenet121] [--batches 1 8]
                                 [--repeats 5] [--no-memory] [--out benchmarks/RESULTS.md]

Needs zennit 0.4.6, zennit-crp 0.6.0 and captum next to lrp (``run.sh`` installs them
in their own environment; lrp itself never imports them).  Models are torchvision
architectures with random weights (no downloads), inputs random 224x224 images.

Speed: each repeat times the plain input-gradient pass (forward + ``autograd.grad`` to
the input) and the method back to back; the table gives the median seconds and the
median of the paired ratios, so load changes on the machine cancel.  Peak memory: a
fresh subprocess per cell runs the method once; the figure is its peak resident set
during the call minus the resident set before it (model and input loaded).

Agreement (printed, and written to the results): the maximum absolute difference
between our relevance and the peer's, relative to the peer's largest value, with the
same rules, parameters and canonization.  A mismatch is shown, not hidden.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torchvision
from torch import Tensor, nn

import lrp
from lrp.canonizers import MergeBatchNorm
from lrp.composites import (AvgPooling, BatchNorm, Composite, Convolution, Dense,
                            EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat,
                            FirstLayerTypeMap, GlobalTypeMap, Linear)
from lrp.rules import Epsilon, Gamma, Norm, Pass, ZBox

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import gradient_pass, paired, peak_mb  # noqa: E402  (the timing of benchmarks/speed.py)

LOW, HIGH = -3.0, 3.0
CRP_LAYER = {"vgg16": "features.28", "resnet50": "layer4.2.conv3",
             "densenet121": "features.denseblock4.denselayer16.conv2"}


# ----------------------------------------------------------------------------- setup

def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def make_input(batch: int) -> Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 3, 224, 224).clamp(LOW, HIGH)


def predicted(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


# --------------------------------------------------------------------------- methods

def ours_composites() -> Dict[str, Callable[[], Composite]]:
    return {
        # average pooling gets Norm, as in Zennit's base map
        "LRP-epsilon": lambda: Composite(GlobalTypeMap([(Linear, Epsilon(1e-6)),
                                                        (AvgPooling, Norm())]),
                                         canonizers=[MergeBatchNorm()], name="LRP-epsilon"),
        "EpsilonGammaBox": lambda: EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()]),
        "EpsilonPlusFlat": lambda: EpsilonPlusFlat(canonizers=[MergeBatchNorm()]),
        "EpsilonAlpha2Beta1": lambda: EpsilonAlpha2Beta1(canonizers=[MergeBatchNorm()]),
    }


def ours_plain_gamma_box() -> Composite:
    """EpsilonGammaBox with the published Gamma on convolutions, as Zennit has it."""
    return Composite(GlobalTypeMap([(Convolution, Gamma(0.25)), (Dense, Epsilon(1e-6)),
                                    (AvgPooling, Norm()), (BatchNorm, Pass())]),
                     FirstLayerTypeMap([(Linear, ZBox(LOW, HIGH))]),
                     canonizers=[MergeBatchNorm()], name="EGB, plain Gamma")


#: Zennit has no BatchNorm canonizer for DenseNet: its SequentialMergeBatchNorm merges
#: across the concatenations and fails (see the agreement rows), so the timing rows run
#: Zennit there without one (BatchNorm then gets no rule).
ZENNIT_UNCANONIZED = ("densenet",)
ZENNIT_NOTE = "Zennit without BatchNorm canonizer"


def zennit_composites(model_name: str, x: Tensor, canonize: bool = True
                      ) -> Dict[str, Callable[[], object]]:
    from zennit import composites as zc
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.rules import Epsilon as ZEpsilon
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    from zennit.types import Convolution as ZConvolution
    from zennit.types import Linear as ZLinear

    def canonizers():
        if not canonize:
            return []
        if model_name.startswith("resnet"):
            return [ResNetCanonizer()]
        if model_name.startswith("vgg"):
            return [VGGCanonizer()]
        return [SequentialMergeBatchNorm()]

    low = torch.full_like(x[:1], LOW)
    high = torch.full_like(x[:1], HIGH)
    return {
        "LRP-epsilon": lambda: zc.LayerMapComposite(
            zc.LAYER_MAP_BASE + [(ZConvolution, ZEpsilon(1e-6)), (ZLinear, ZEpsilon(1e-6))],
            canonizers=canonizers()),
        "EpsilonGammaBox": lambda: zc.EpsilonGammaBox(low=low, high=high, canonizers=canonizers()),
        "EpsilonPlusFlat": lambda: zc.EpsilonPlusFlat(canonizers=canonizers()),
        "EpsilonAlpha2Beta1": lambda: zc.EpsilonAlpha2Beta1(canonizers=canonizers()),
    }


def timing_canonize(model_name: str) -> bool:
    return not model_name.startswith(ZENNIT_UNCANONIZED)


def forward_pass(model: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    def run():
        with torch.no_grad():
            return model(x)
    return run


def ours_lrp(model, x, t, make, output_relevance: str = "logit") -> Callable[[], Tensor]:
    composite = make()
    return lambda: lrp.explain(model, x, composite, t, audit="off",
                               output_relevance=output_relevance).relevance


def zennit_lrp(model, x, t, make) -> Callable[[], Tensor]:
    """Zennit's Gradient attributor, attached per call as ours is (canonizers and hooks)."""
    from zennit.attribution import Gradient
    composite = make()
    one_hot = torch.zeros(x.shape[0], 1000, dtype=x.dtype).scatter_(1, t[:, None], 1.0)

    def run():
        with Gradient(model=model, composite=composite) as attributor:
            return attributor(x, one_hot)[1]
    return run


def captum_lrp(model, x, t) -> Callable[[], Tensor]:
    from captum.attr import LRP
    method = LRP(model)
    return lambda: method.attribute(x, target=t)


def ours_deeplift(model, x, t) -> Callable[[], Tensor]:
    from lrp.deeplift import deeplift
    return lambda: deeplift(model, x, t).relevance


def captum_deeplift(model, x, t) -> Callable[[], Tensor]:
    from captum.attr import DeepLift
    method = DeepLift(model)
    return lambda: method.attribute(x, baselines=torch.zeros_like(x), target=t)


def ours_crp(model, x, t, layer: str, n: int) -> Callable[[], Tensor]:
    from lrp.crp import attribute
    composite = EpsilonPlusFlat(canonizers=[MergeBatchNorm()])
    conditions = [{layer: [c], "y": t} for c in range(n)]
    return lambda: attribute(model, x, composite, conditions, audit="off").relevance


def zennit_crp(model_name, model, x, t, layer: str, n: int,
               canonize: Optional[bool] = None) -> Callable[[], Tensor]:
    from crp.attribution import CondAttribution
    canonize = timing_canonize(model_name) if canonize is None else canonize
    make = zennit_composites(model_name, x, canonize)["EpsilonPlusFlat"]
    composite = make()
    attribution = CondAttribution(model, no_param_grad=True)
    conditions = [{layer: [c], "y": [int(t[0])]} for c in range(n)]
    return lambda: attribution(x[:1].requires_grad_(True), conditions, composite).heatmap


def ours_multi_target(model, x, k: int, loop: bool) -> Callable[[], Tensor]:
    composite = EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()])
    targets = torch.arange(k).expand(x.shape[0], k)
    if loop:
        return lambda: [lrp.explain(model, x, composite, int(c), audit="off").relevance
                        for c in range(k)]
    return lambda: lrp.explain(model, x, composite, targets, audit="off").relevance


# --------------------------------------------------------------------------- memory

def memory_probe(model_name: str, batch: int, method: str) -> None:
    """Subprocess entry: run one method once, print its peak memory increase (MiB).

    The kernel's peak resident set (VmHWM) is reset to the current one just before the
    call (``/proc/self/clear_refs``), so model creation does not count."""
    model = make_model(model_name)
    x = make_input(batch)
    t = predicted(model, x)
    fn, cleanup = build(method, model_name, model, x, t)
    peak = peak_mb(fn)
    cleanup()
    print(json.dumps({"peak_mb": peak}))


def measure_memory(model_name: str, batch: int, method: str) -> Optional[float]:
    proc = subprocess.run([sys.executable, __file__, "--probe", model_name, str(batch), method],
                          capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
    except (IndexError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------------- the table

def method_names(model_name: str, batch: int) -> List[str]:
    names = ["forward", "gradient"]
    for c in ours_composites():
        names += [f"ours {c}", f"zennit {c}"]
    names += ["captum LRP", "ours DeepLift", "captum DeepLift"]
    if batch == 1:
        names += ["ours CRP 8", "zennit-crp CRP 8", "ours CRP 32", "zennit-crp CRP 32"]
    names += ["ours 10 targets at once", "ours 10 targets, loop"]
    return names


def build(method: str, model_name: str, model, x, t):
    """The callable timing ``method`` and a cleanup function."""
    nothing = lambda: None  # noqa: E731
    if method == "forward":
        return forward_pass(model, x), nothing
    if method == "gradient":
        return gradient_pass(model, x, t), nothing
    owner, _, rest = method.partition(" ")
    if rest in ours_composites():
        if owner == "ours":
            return ours_lrp(model, x, t, ours_composites()[rest]), nothing
        composites = zennit_composites(model_name, x, timing_canonize(model_name))
        return zennit_lrp(model, x, t, composites[rest]), nothing
    if method == "captum LRP":
        return captum_lrp(model, x, t), nothing
    if method == "ours DeepLift":
        return ours_deeplift(model, x, t), nothing
    if method == "captum DeepLift":
        return captum_deeplift(model, x, t), nothing
    if rest.startswith("CRP"):
        n = int(rest.split()[1])
        if owner == "ours":
            return ours_crp(model, x, t, CRP_LAYER[model_name], n), nothing
        return zennit_crp(model_name, model, x, t, CRP_LAYER[model_name], n), nothing
    if method.startswith("ours 10 targets"):
        return ours_multi_target(model, x, 10, loop=method.endswith("loop")), nothing
    raise KeyError(method)


def max_relative_difference(ours: Tensor, theirs: Tensor) -> float:
    scale = theirs.abs().max().item()
    return float((ours - theirs).abs().max().item() / (scale if scale > 0 else 1.0))


def agreement(model_name: str) -> List[Tuple[str, str, str]]:
    """Ours vs Zennit (LRP), batch 1, in float64 so that rounding does not hide or fake
    a difference.  Also the relevance sum of each (relevance 1 enters at the target)."""
    x = make_input(1).double()
    rows = []
    pairs = dict(ours_composites())
    pairs["EpsilonGammaBox"] = ours_plain_gamma_box
    for name, make in pairs.items():
        label = name + (" (plain Gamma, as Zennit)" if name == "EpsilonGammaBox" else "")
        # a fresh model per row: a peer failing half-way may leave it modified
        model = make_model(model_name).double()
        t = predicted(model, x)
        try:
            # Zennit starts from relevance 1 at the target (our "normalized")
            ours = ours_lrp(model, x, t, make, "normalized")()
            theirs = zennit_lrp(model, x, t, zennit_composites(model_name, x)[name])()
            rows.append((label, f"{max_relative_difference(ours, theirs):.1e}",
                         f"{ours.sum().item():.3f} / {theirs.sum().item():.3f}"))
        except Exception as err:  # noqa: BLE001 - a failing peer is a result
            rows.append((label, f"error: {type(err).__name__}: {str(err)[:80]}", ""))
    # Captum's LRP: Epsilon(1e-9) on convolutions, dense layers and pooling; it starts
    # from the logit, so the sums should be near f(x)
    model = make_model(model_name).double()
    t = predicted(model, x)
    label = "LRP-epsilon 1e-9 vs Captum LRP (sums: ours / Captum / logit)"
    try:
        ours = lrp.explain(model, x, Composite(GlobalTypeMap([(Linear, Epsilon(1e-9)),
                                                              (AvgPooling, Norm(1e-9))]),
                                               canonizers=[MergeBatchNorm()]),
                           t, audit="off").relevance
        theirs = captum_lrp(model, x, t)()
        with torch.no_grad():
            logit = model(x)[0, t[0]].item()
        rows.append((label, f"{max_relative_difference(ours, theirs):.1e}",
                     f"{ours.sum().item():.4g} / {theirs.sum().item():.4g} / {logit:.4g}"))
    except Exception as err:  # noqa: BLE001
        rows.append((label, f"error: {type(err).__name__}: {str(err)[:80]}", ""))
    rows.append(crp_agreement(model_name, x))
    return rows


def crp_agreement(model_name: str, x: Tensor, n: int = 4) -> Tuple[str, str, str]:
    """Ours vs zennit-crp: conditional heatmaps of the first ``n`` channels of the CRP
    layer with EpsilonPlusFlat (float64); the sums are over all ``n`` heatmaps."""
    label = f"CRP, {n} channels of {CRP_LAYER[model_name]}, EpsilonPlusFlat, vs zennit-crp"
    model = make_model(model_name).double()
    t = predicted(model, x)
    try:
        ours = ours_crp(model, x, t, CRP_LAYER[model_name], n)()[0].sum(1)  # as zennit-crp
        theirs = zennit_crp(model_name, model, x, t, CRP_LAYER[model_name], n, canonize=True)()
        return (label, f"{max_relative_difference(ours, theirs):.1e}",
                f"{ours.sum().item():.4g} / {theirs.sum().item():.4g}")
    except Exception as err:  # noqa: BLE001
        return (label, f"error: {type(err).__name__}: {str(err)[:80]}", "")


def deeplift_agreement() -> List[Tuple[str, str]]:
    """Ours vs Captum DeepLift where Captum is correct (no max pooling, no module reuse),
    and summation-to-delta of both on VGG16 (max pooling)."""
    from captum.attr import DeepLift
    from lrp.deeplift import deeplift
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(4, 3, 32, 32)
    t = predicted(model, x)
    ours = deeplift(model, x, t).relevance
    theirs = DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=t)
    rows = [("DeepLift vs Captum, small CNN with average pooling",
             f"{max_relative_difference(ours, theirs):.1e}")]
    vgg = make_model("vgg16")
    x = make_input(1)
    t = predicted(vgg, x)
    with torch.no_grad():
        delta = (vgg(x) - vgg(torch.zeros_like(x))).gather(1, t[:, None]).squeeze(1)
    for label, fn in (("ours", ours_deeplift(vgg, x, t)), ("captum", captum_deeplift(vgg, x, t))):
        try:
            r = fn()
            err = ((r.flatten(1).sum(1) - delta).abs() / delta.abs()).max().item()
            rows.append((f"DeepLift summation-to-delta error on VGG16 (max pooling), {label}",
                         f"{err:.1e}"))
        except Exception as e:  # noqa: BLE001
            rows.append((f"DeepLift on VGG16, {label}", f"error: {type(e).__name__}"))
    return rows


#: Rows also given relative to another row of the same table: CRP against one heatmap
#: of the same library and composite, several targets against one target.
RELATIVE_TO = {"ours CRP": ("ours EpsilonPlusFlat", "heatmaps"),
               "zennit-crp CRP": ("zennit EpsilonPlusFlat", "heatmaps"),
               "ours 10 targets": ("ours EpsilonGammaBox", "x one target")}


def relative_note(method: str, ratios: Dict[str, float]) -> str:
    """``"= 11.8 heatmaps"`` for a row measured against another row's ratio."""
    for prefix, (other, unit) in RELATIVE_TO.items():
        if method.startswith(prefix) and method in ratios and ratios.get(other):
            return f"= {ratios[method] / ratios[other]:.2f} {unit}"
    return ""


def run_cell(method, model_name, model, x, t, base, repeats):
    try:
        fn, cleanup = build(method, model_name, model, x, t)
    except Exception as err:  # noqa: BLE001
        return None, None, f"{type(err).__name__}: {str(err)[:60]}"
    try:
        seconds, ratio = paired(base, fn, repeats)
        return seconds, ratio, ""
    except Exception as err:  # noqa: BLE001 - a failing peer is a result
        return None, None, f"{type(err).__name__}: {str(err)[:60]}"
    finally:
        cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50", "densenet121"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    parser.add_argument("--probe", nargs=3, metavar=("MODEL", "BATCH", "METHOD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        memory_probe(args.probe[0], int(args.probe[1]), args.probe[2])
        return

    import captum
    from importlib.metadata import version
    versions = (f"lrp {lrp.__version__}, torch {torch.__version__}, torchvision "
                f"{torchvision.__version__}, zennit {version('zennit')}, "
                f"zennit-crp {version('zennit-crp')}, captum {captum.__version__}")
    lines = ["# Benchmark results", "",
             f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, {torch.get_num_threads()} threads; {versions}.", "",
             "Random weights and 224x224 random inputs; ratio = time / plain input-gradient "
             f"pass in the same run (median of {args.repeats} paired repeats after a warm-up); "
             "memory = peak resident-set increase of one call in a fresh process.", ""]
    print(lines[2], flush=True)

    lines += ["## Agreement (float64)", "",
              "| comparison | model | max relative difference | sum of relevance, ours / peer |",
              "|---|---|---|---|"]
    for model_name in args.models:
        for label, value, sums in agreement(model_name):
            print(f"agreement {model_name:<13} {label:<45} {value}  {sums}", flush=True)
            peer = "" if "Captum" in label or "CRP" in label else "ours vs Zennit "
            lines.append(f"| {peer}{label} | {model_name} | {value} | {sums} |")
    try:
        for label, value in deeplift_agreement():
            print(f"agreement {label:<60} {value}", flush=True)
            lines.append(f"| {label} | | {value} | |")
    except ImportError as err:
        lines.append(f"| DeepLift | | not available: {err} | |")

    for model_name in args.models:
        model = make_model(model_name)
        for batch in args.batches:
            x = make_input(batch)
            t = predicted(model, x)
            base = gradient_pass(model, x, t)
            lines += ["", f"## {model_name}, batch {batch}", "",
                      "| method | seconds | ratio to gradient | peak memory (MiB) | note |",
                      "|---|---|---|---|---|"]
            ratios: Dict[str, float] = {}
            for method in method_names(model_name, batch):
                seconds, ratio, note = run_cell(method, model_name, model, x, t, base,
                                                args.repeats)
                if ratio is not None:
                    ratios[method] = ratio
                    note = relative_note(method, ratios)
                if method.startswith("zennit") and not timing_canonize(model_name):
                    note = "; ".join(filter(None, [note, ZENNIT_NOTE]))
                if note:  # a failing peer may leave the model modified: start afresh
                    model = make_model(model_name)
                    base = gradient_pass(model, x, t)
                memory = None if args.no_memory or seconds is None else \
                    measure_memory(model_name, batch, method)
                cells = [method, "-" if seconds is None else f"{seconds:.3f}",
                         "-" if ratio is None else f"{ratio:.2f}",
                         "-" if memory is None else f"{memory:.0f}", note]
                print(f"{model_name:<13} b{batch} " + " | ".join(cells), flush=True)
                lines.append("| " + " | ".join(cells) + " |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
