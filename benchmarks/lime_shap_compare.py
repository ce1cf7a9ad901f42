"""LIME and Kernel SHAP: agreement with Captum's ``Lime`` / ``KernelShap`` and speed,
on the shipped digits CNN (``lrp.demo``) with 64 held-out digits.

    LRP_BENCH_VENV=/work/cmpvenv bash benchmarks/run.sh lime_shap_compare.py \
        [--images 64] [--samples 200] [--repeats 3] [--out benchmarks/RESULTS.md]

Interpretable features are grid cells of the 32x32 input (``lrp.features.grid``; the
same mask is Captum's ``feature_mask``); absent cells are black (``lrp.demo.LOW``,
Captum's ``baselines``).

Agreement, on the same samples and perturbations:

* LIME: our coalitions (``lrp.lime.draw_coalitions`` with the seed of the run) are
  fed to Captum's ``Lime`` through its ``perturb_func``, our kernel (cosine distance
  on the coalition, width 0.25) through its ``similarity_func``, and Captum fits
  ``SkLearnRidge(alpha=1)``: the weighted ridge regression that ``lrp.lime.lime``
  solves.  Compared: the coefficients of each feature.
* Kernel SHAP, exact: on a 3x3 grid (9 features) ours enumerates all 510
  coalitions and is exact; Captum's ``KernelShap`` is given the same 510 coalitions
  with their Shapley kernel weights, plus the empty and the full coalition with its
  own large weight (1e6), in place of its sampling.  Also our values against a
  brute-force Shapley computation (each feature's weighted marginal contributions
  over all 2^9 coalitions).
* Kernel SHAP, sampled: with the same budget of coalitions on the 3x3 grid, the error
  of each tool's own sampling (ours: exact small sizes plus paired sampling; Captum:
  sampling by the kernel) against the exact values.

Speed: each tool with its own defaults for everything but the budget
(``--samples`` coalitions per image), the features (4x4 grid, 16 features) and the
black reference.  Ours with ``batch_size=256`` rows per forward; Captum batched
(``perturbations_per_eval = --samples``: one forward per image) and with its default
(``perturbations_per_eval=1``: one forward per coalition; timed in the first repeat
only, it takes 10-20 times longer).  Paired repeats after a warm-up, ratio = Captum
time / our time in the same repeat, median over repeats.  Captum's default dominates
the run time (12 minutes for one LIME run on the shared 2-core machine of
RESULTS.md).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import re
import statistics
import time
import warnings

import numpy as np
import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import KernelShap, Lime
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import lrp
from lrp import demo
from lrp.features import grid
from lrp.kernel_shap import kernel_shap, shapley_coalitions
from lrp.lime import draw_coalitions, kernel, lime

SECTION = "## LIME and Kernel SHAP vs Captum"


def digits(n: int) -> torch.Tensor:
    """``n`` held-out test digits (the split the shipped model was trained with)."""
    data = load_digits()
    _, test = train_test_split(np.arange(len(data.images)), test_size=0.25, random_state=0)
    if n > len(test):
        raise SystemExit(f"--images must be at most {len(test)}")
    return demo.prepare_digits(data.images[test[:n]].astype(np.uint8))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


def injected(rows: torch.Tensor):
    """A Captum ``perturb_func`` (generator function) yielding ``rows[b]`` for the
    ``b``-th example Captum explains (it explains the examples of a batch in turn)."""
    state = {"example": 0}

    def perturb(original, **kwargs):
        b = state["example"]
        state["example"] += 1
        for row in rows[b]:
            yield row[None].long()
    return perturb


def lime_agreement(model, x, target, features, samples: int, seed: int) -> dict:
    ours = lime(model, x, target=target, features=features, background=demo.LOW,
                n_samples=samples, alpha=1.0, kernel_width=0.25, seed=seed)
    z = draw_coalitions(features.counts, samples, torch.Generator().manual_seed(seed), x.device)
    m = int(features.counts[0])

    def similarity(original, perturbed, sample, **kwargs):
        return float(kernel(sample[None].bool(), torch.tensor([m]), "cosine", 0.25)[0, 0])

    captum = Lime(model, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=similarity,
                  perturb_func=injected(z))
    coef = captum.attribute(x, target=target, baselines=demo.LOW,
                            feature_mask=features.mask[:1], n_samples=samples,
                            perturbations_per_eval=samples, return_input_shape=False)
    return {"ours": ours.surrogate.coefficients, "captum": coef.reshape(ours.surrogate
                                                                        .coefficients.shape)}


def brute_force_shapley(model, x, target, features, reference: float) -> torch.Tensor:
    """phi_i = sum_S |S|! (M - |S| - 1)! / M! (v(S + i) - v(S)) over all coalitions S,
    with v(S) the target logit when the features outside S are set to ``reference``."""
    m = int(features.counts[0])
    codes = torch.arange(2 ** m)
    present = (codes[:, None] >> torch.arange(m)) & 1 == 1  # (2^m, m)
    values = torch.zeros(x.shape[0], 2 ** m, dtype=torch.float64)
    for b in range(x.shape[0]):
        keep = present[:, features.mask[b].flatten()].view((2 ** m,) + x.shape[1:])
        with torch.no_grad():
            out = model(torch.where(keep, x[b], torch.full_like(x[b], reference)))
        values[b] = out[:, int(target[b])].double()
    phi = torch.zeros(x.shape[0], m, dtype=torch.float64)
    for i in range(m):
        for code in range(2 ** m):
            if code >> i & 1:
                continue
            size = bin(code).count("1")
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            phi[:, i] += weight * (values[:, code | 1 << i] - values[:, code])
    return phi


def shap_agreement(model, x, target, features) -> dict:
    m = int(features.counts[0])
    exact = kernel_shap(model, x, target=target, features=features, background=demo.LOW,
                        n_samples=2 ** m - 2)
    z, w = shapley_coalitions(m, 2 ** m - 2)
    rows = torch.cat([torch.ones(1, m, dtype=torch.bool), torch.zeros(1, m, dtype=torch.bool),
                      z])
    weights = {tuple(r.tolist()): float(v) for r, v in zip(z, w)}

    def similarity(original, perturbed, sample, **kwargs):
        return weights.get(tuple(bool(v) for v in sample[0].tolist()), 1e6)

    captum = KernelShap(model)
    captum.perturb_func = injected(rows.expand(x.shape[0], -1, -1))
    captum.similarity_func = similarity
    coef = captum.attribute(x, target=target, baselines=demo.LOW,
                            feature_mask=features.mask[:1], n_samples=len(rows),
                            perturbations_per_eval=len(rows), return_input_shape=False)
    brute = brute_force_shapley(model, x, target, features, demo.LOW)
    return {"ours": exact.surrogate.coefficients.double(), "captum": coef.reshape(x.shape[0], m)
            .double(), "brute": brute, "efficiency": float(exact.convergence.abs().max())}


def sampled_errors(model, x, target, features, exact: torch.Tensor, budget: int,
                   seeds: int) -> tuple[float, float]:
    """Mean over images and seeds of |phi_sampled - phi_exact|_2 / |phi_exact|_2."""
    ours, theirs = [], []
    for seed in range(seeds):
        mine = kernel_shap(model, x, target=target, features=features, background=demo.LOW,
                           n_samples=budget, seed=seed).surrogate.coefficients.double()
        torch.manual_seed(seed)
        captum = KernelShap(model).attribute(
            x, target=target, baselines=demo.LOW, feature_mask=features.mask[:1],
            n_samples=budget, perturbations_per_eval=budget, return_input_shape=False)
        captum = captum.reshape(exact.shape).double()
        norm = exact.norm(dim=1)
        ours.append(((mine - exact).norm(dim=1) / norm).mean())
        theirs.append(((captum - exact).norm(dim=1) / norm).mean())
    return float(torch.stack(ours).mean()), float(torch.stack(theirs).mean())


def speed(model, x, target, features, samples: int, repeats: int) -> list[tuple]:
    """Median seconds of the model forwards alone, ours, Captum batched
    (``perturbations_per_eval=samples``) and Captum with its default (1), and the
    medians of the paired ratios Captum / ours."""
    def ours_lime(xx, tt, ff, per_eval):
        return lime(model, xx, target=tt, features=ff, background=demo.LOW, n_samples=samples,
                    seed=0)

    def captum_lime(xx, tt, ff, per_eval):
        return Lime(model).attribute(xx, target=tt, baselines=demo.LOW, feature_mask=ff.mask[:1],
                                     n_samples=samples, perturbations_per_eval=per_eval)

    def ours_shap(xx, tt, ff, per_eval):
        return kernel_shap(model, xx, target=tt, features=ff, background=demo.LOW,
                           n_samples=samples, seed=0)

    def captum_shap(xx, tt, ff, per_eval):
        return KernelShap(model).attribute(xx, target=tt, baselines=demo.LOW,
                                           feature_mask=ff.mask[:1], n_samples=samples,
                                           perturbations_per_eval=per_eval)

    forwards = torch.randn(x.shape[0] * samples, *x.shape[1:])

    def model_only():
        with torch.no_grad():
            for start in range(0, len(forwards), 256):
                model(forwards[start:start + 256])

    rows = []
    small = (x[:2], target[:2], grid(x[:2], 4))
    for name, ours, theirs in (("LIME", ours_lime, captum_lime),
                               ("Kernel SHAP", ours_shap, captum_shap)):
        ours(*small, None)  # warm-up
        theirs(*small, samples)
        times: dict[str, list[float]] = {"model": [], "ours": [], "batched": [], "default": []}
        ratios: dict[str, list[float]] = {"batched": [], "default": []}
        for repeat in range(repeats):
            times["model"].append(timed(model_only)[0])
            times["ours"].append(timed(lambda: ours(x, target, features, None))[0])
            # Captum's default (one forward per coalition) is 10-20x slower: first repeat only
            for key, per_eval in (("batched", samples), ("default", 1))[:2 if repeat == 0 else 1]:
                times[key].append(timed(lambda: theirs(x, target, features, per_eval))[0])
                ratios[key].append(times[key][-1] / times["ours"][-1])
        row = (name,) + tuple(statistics.median(times[k]) for k in times) + \
            tuple(statistics.median(ratios[k]) for k in ratios)
        rows.append(row)
        print(f"{name}: model only {row[1]:.2f} s, ours {row[2]:.2f} s, captum batched "
              f"{row[3]:.2f} s ({row[5]:.1f}x), captum default {row[4]:.2f} s ({row[6]:.1f}x)",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--samples", type=int, default=200,
                        help="coalitions per image for LIME and the timing (default: 200)")
    parser.add_argument("--budget", type=int, default=100,
                        help="coalitions per image for the sampled Kernel SHAP comparison")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    args = parser.parse_args()
    # Captum warns on every batch that it fits one model per example (as intended here)
    warnings.filterwarnings("ignore", message="You are providing multiple inputs")

    import captum
    torch.manual_seed(0)
    model = demo.load_demo_model()
    x = digits(args.images)
    with torch.no_grad():
        target = model(x).argmax(1)
    grid3, grid4 = grid(x, 3), grid(x, 4)

    agree = lime_agreement(model, x, target, grid4, args.samples, seed=0)
    lime_diff = relative(agree["captum"].double(), agree["ours"].double())
    print(f"LIME vs Captum Lime (same coalitions, kernel, ridge): {lime_diff:.1e}", flush=True)
    shap = shap_agreement(model, x, target, grid3)
    shap_diff = relative(shap["captum"], shap["ours"])
    brute_diff = relative(shap["ours"], shap["brute"])
    captum_brute = relative(shap["captum"], shap["brute"])
    print(f"Kernel SHAP exact vs Captum (same coalitions): {shap_diff:.1e}; vs brute force: "
          f"ours {brute_diff:.1e}, captum {captum_brute:.1e}", flush=True)
    ours_err, captum_err = sampled_errors(model, x, target, grid3, shap["brute"], args.budget,
                                          args.seeds)
    print(f"sampled, {args.budget} coalitions: error ours {ours_err:.3f}, captum "
          f"{captum_err:.3f}", flush=True)
    rows = speed(model, x, target, grid4, args.samples, args.repeats)

    lines = [
        SECTION, "",
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores "
        f"(shared with other jobs: absolute times are noisy, the ratios are paired), torch "
        f"{torch.__version__}, lrp {lrp.__version__}, captum {captum.__version__}. Shipped digits "
        f"CNN, {args.images} held-out digits, predicted classes, absent features black. "
        "Command: `LRP_BENCH_VENV=/work/cmpvenv bash benchmarks/run.sh lime_shap_compare.py`.",
        "",
        "| comparison | features | max relative difference |",
        "|---|---|---|",
        f"| LIME vs Captum `Lime`, same {args.samples} coalitions per image, same kernel, "
        f"ridge alpha=1 (Captum: `SkLearnRidge`) | 4x4 grid (16) | {lime_diff:.1e} |",
        "| Kernel SHAP (all 510 coalitions) vs Captum `KernelShap` given the same coalitions "
        f"and weights | 3x3 grid (9) | {shap_diff:.1e} |",
        f"| Kernel SHAP (all 510 coalitions) vs brute-force Shapley values | 3x3 grid (9) | "
        f"{brute_diff:.1e} |",
        f"| Captum `KernelShap` (same coalitions) vs brute-force Shapley values | 3x3 grid (9) | "
        f"{captum_brute:.1e} |",
        "",
        f"Efficiency of our exact Kernel SHAP: max |sum(phi) - (f(x) - f(black))| = "
        f"{shap['efficiency']:.1e}.",
        "",
        f"Sampling with {args.budget} coalitions per image (of 510) on the 3x3 grid, each tool's "
        f"own sampling, mean over images and {args.seeds} seeds of |phi - phi_exact| / "
        f"|phi_exact|: ours {ours_err:.3f}, Captum {captum_err:.3f}.",
        "",
        f"Speed, {args.images} images, {args.samples} coalitions per image, 4x4 grid (16 "
        f"features), each tool's defaults otherwise; Captum batched: `perturbations_per_eval="
        f"{args.samples}` (one forward per image), Captum default: `perturbations_per_eval=1`. "
        f"Median of {args.repeats} paired repeats after a warm-up (Captum default: the first "
        f"repeat only); \"model forwards alone\" "
        f"is the {args.images * args.samples} forwards in chunks of 256 without any method:",
        "",
        "| method | model forwards alone (s) | ours (s) | Captum batched (s) | Captum default (s) "
        "| Captum batched / ours | Captum default / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {m:.2f} | {o:.2f} | {b:.2f} | {d:.2f} | {rb:.1f} | {rd:.1f} |"
              for name, m, o, b, d, rb, rd in rows]
    section = "\n".join(lines) + "\n"
    print(section)
    text = open(args.out).read() if os.path.exists(args.out) else "# Benchmark results\n"
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: section.rstrip("\n"), text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section
    with open(args.out, "w") as f:
        f.write(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
