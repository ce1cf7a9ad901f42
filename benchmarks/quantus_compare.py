"""lrp.evaluate against Quantus 0.6: agreement and speed, side by side in one run.

    bash benchmarks/run.sh quantus_compare.py [-n 256] [--repeats 1] [--only A,B] [--write]

The shipped digits CNN (lrp.demo) on ``n`` held-out digits of scikit-learn's test split
(the model's own split), explained with EpsilonPlus (BatchNorm fused).  Both tools get
the same inputs, labels and relevance, and the same settings; random choices are fixed
where Quantus allows it:

* faithfulness correlation: Quantus draws its subsets with ``np.random.choice`` (and
  one ``np.random.uniform`` per perturbation for its baseline table); the script seeds
  numpy, replays those draws and hands the same subsets to lrp (``subsets=``);
* ROAD: noise 0 (the imputation is deterministic) in both;
* MPRT: lrp's ``randomize`` re-initializes each layer as Quantus does
  (``torch.manual_seed(seed + 1)``, then ``reset_parameters()``).

Agreement is the largest absolute difference divided by the largest absolute value of
Quantus' numbers (curves, per-sample scores).  Speed: the median of ``--repeats``
paired runs after a warm-up run (Quantus, then lrp, back to back; the paired timing of
benchmarks/speed.py), as a ratio in the same run; "forward floor" is the time of the
model forwards alone that a metric needs (every perturbed input through the model
once, in batches of 256), the lower bound of
both tools for the perturbation metrics.  ``--write`` adds the tables to
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
from pathlib import Path

import numpy as np
import quantus
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from lrp import evaluate, explain
from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonPlus
from lrp.demo import load_demo_model, prepare_digits

from speed import paired

BATCH = 256
GROUPS = ("pixel-flipping", "region", "correlation", "road", "complexity", "mprt")


def data(n: int):
    digits = load_digits()
    _, images, _, labels = train_test_split(digits.images, digits.target, test_size=0.25,
                                            random_state=0)
    if n > len(labels):
        raise SystemExit(f"-n at most {len(labels)}")
    return prepare_digits(images[:n]), torch.as_tensor(labels[:n], dtype=torch.long)


def relative(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    scale = np.abs(theirs).max()
    return float(np.abs(ours - theirs).max() / (scale if scale > 0 else 1.0))


def lrp_explain_func(composite):
    def explain_func(model, inputs, targets, **kwargs):
        x = torch.as_tensor(inputs, dtype=torch.float32)
        return explain(model, x, composite, target=torch.as_tensor(targets).long(),
                       audit="off").relevance.numpy()
    return explain_func


def replay_subsets(n: int, n_features: int, runs: int, size: int, batch: int, seed: int):
    """The subsets Quantus' FaithfulnessCorrelation draws after ``np.random.seed(seed)``."""
    np.random.seed(seed)
    subsets = np.zeros((n, runs, size), dtype=np.int64)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        for r in range(runs):
            for i in range(start, stop):
                subsets[i, r] = np.random.choice(n_features, size, replace=False)
            np.random.uniform(0.0, 1.0, size=stop - start)  # Quantus' baseline table
    return subsets


def forward_floor(model, x, passes: int):
    def run():
        with torch.no_grad():
            rows = x.repeat(passes, 1, 1, 1)
            for start in range(0, rows.shape[0], BATCH):
                model(rows[start:start + BATCH])
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-speed", action="store_true", help="agreement only")
    parser.add_argument("--only", default=",".join(GROUPS), metavar="A,B",
                        help="metric groups: " + ",".join(GROUPS) + " (default: all)")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_demo_model()
    x, y = data(args.n)
    composite = EpsilonPlus(canonizers=[MergeBatchNorm()])
    a = explain(model, x, composite, target=y, audit="off").relevance
    xn, yn, an = x.numpy(), y.numpy(), a.numpy()
    n_features = 32 * 32
    groups = set(args.only.split(","))
    if groups - set(GROUPS):
        raise SystemExit(f"unknown groups {sorted(groups - set(GROUPS))}; valid: {', '.join(GROUPS)}")
    speed = []

    class Agreement(list):
        def append(self, row):
            print(f"agreement: {row[0]}: {row[1]:.1e}", flush=True)
            super().append(row)

    agreement = Agreement()

    def record_speed(name, theirs, ours, floor_passes=None):
        if args.no_speed:
            return
        seconds, ratio = paired(theirs, ours, args.repeats)
        t_quantus = seconds / ratio
        row = [name, f"{t_quantus:.2f}", f"{seconds:.3f}", f"{1 / ratio:.1f}x"]
        if floor_passes:
            floor_s, _ = paired(forward_floor(model, x, floor_passes),
                                forward_floor(model, x, floor_passes), 1)
            row.append(f"{floor_s:.2f} ({t_quantus / floor_s:.1f}x)")
        else:
            row.append("")
        speed.append(row)
        print(" | ".join(row), flush=True)

    # ---------------------------------------------------------------- pixel flipping
    if "pixel-flipping" in groups:
        step = 16
        q_pf = quantus.PixelFlipping(features_in_step=step, perturb_baseline="black",
                                     disable_warnings=True)

        def quantus_pf():
            return np.asarray(q_pf(model=model, x_batch=xn, y_batch=yn, a_batch=an, softmax=False,
                                   device="cpu", batch_size=BATCH))

        def ours_pf():
            return evaluate.pixel_flipping(model, x, a, y, patches_per_step=step, fill="min",
                                           batch_size=BATCH)

        theirs, ours = quantus_pf(), ours_pf()
        agreement.append(["pixel-flipping curve, MoRF, 16 pixels per step, black (min) fill",
                          relative(ours.curves["morf"][:, 1:], theirs)])
        agreement.append(["pixel-flipping AUC (trapezoid of Quantus' curve)",
                          relative(np.trapezoid(ours.curves["morf"][:, 1:].numpy(), axis=1),
                                   np.trapezoid(theirs, axis=1))])
        record_speed("pixel-flipping (64 steps)", quantus_pf, ours_pf, n_features // step)

    # ---------------------------------------------------------------- region perturbation
    if "region" in groups:
        for order in ("morf", "lerf"):
            q_rp = quantus.RegionPerturbation(patch_size=4, order=order, regions_evaluation=64,
                                              perturb_baseline="black", disable_warnings=True)

            def quantus_rp(q_rp=q_rp):
                return np.asarray(q_rp(model=model, x_batch=xn, y_batch=yn, a_batch=an,
                                       softmax=False, device="cpu", batch_size=BATCH))

            def ours_rp(order=order):
                return evaluate.pixel_flipping(model, x, a, y, order=order, patch_size=4, fill="min",
                                               batch_size=BATCH)

            theirs, ours = quantus_rp(), ours_rp()
            curve = ours.curves[order]
            agreement.append([f"region perturbation {order.upper()}, 4x4 patches: f(x) - f(x^k)",
                              relative(curve[:, :1] - curve[:, 1:], theirs)])
            agreement.append([f"AOPC {order.upper()} = sum(Quantus curve) / (L + 1)",
                              relative(ours.scores, theirs.sum(axis=1) / (theirs.shape[1] + 1))])
            if order == "morf":
                record_speed("region perturbation (64 patches)", quantus_rp, ours_rp, 64)

    # ---------------------------------------------------------------- faithfulness correlation
    if "correlation" in groups:
        runs, size, seed = 100, 224, 7
        q_fc = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline="black",
                                               return_aggregate=False, disable_warnings=True)
        subsets = torch.as_tensor(replay_subsets(args.n, n_features, runs, size, BATCH, seed))

        def quantus_fc():
            np.random.seed(seed)
            return np.asarray(q_fc(model=model, x_batch=xn, y_batch=yn, a_batch=an, softmax=False,
                                   device="cpu", batch_size=BATCH))

        def ours_fc(subsets=subsets):
            return evaluate.faithfulness_correlation(model, x, a, y, fill="min", subsets=subsets,
                                                     batch_size=BATCH)

        theirs, ours = quantus_fc(), ours_fc()
        agreement.append(["faithfulness correlation, same 100 subsets of 224 pixels",
                          relative(ours.scores, theirs)])
        record_speed("faithfulness correlation (100 runs)", quantus_fc,
                     lambda: evaluate.faithfulness_correlation(model, x, a, y, runs=runs,
                                                               subset_size=size, fill="min",
                                                               generator=seed, batch_size=BATCH),
                     runs)

    # ---------------------------------------------------------------- ROAD
    if "road" in groups:
        percentages = list(range(10, 100, 10))
        q_road = quantus.ROAD(noise=0.0, percentages=percentages, disable_warnings=True)

        def quantus_road():
            return q_road(model=model, x_batch=xn, y_batch=yn, a_batch=an, softmax=False,
                          device="cpu", batch_size=BATCH)

        def ours_road():
            return evaluate.road(model, x, a, y, percentages=percentages, noise=0.0, batch_size=BATCH)

        theirs, ours = quantus_road(), ours_road()
        agreement.append(["ROAD MoRF accuracy per percentage (10..90 %), noise 0",
                          relative(ours.curves["morf"].mean(0), [theirs[p] for p in percentages])])
        from quantus.functions.perturb_func import noisy_linear_imputation as q_impute
        order = torch.argsort(-a.flatten(1), dim=1, stable=True).numpy()
        worst = 0.0
        for i in range(8):
            for p in (10, 50, 90):
                k = int(n_features * p / 100)
                mask = torch.zeros(n_features, dtype=torch.bool)
                mask[torch.as_tensor(order[i, :k])] = True
                mine = evaluate.noisy_linear_imputation(x[i:i + 1], mask.reshape(1, 32, 32), noise=0.0)
                worst = max(worst, relative(mine[0].numpy(), q_impute(xn[i], order[i, :k], noise=0.0)))
        agreement.append(["noisy linear imputation (8 digits x 10/50/90 %), noise 0", worst])
        record_speed("ROAD (9 percentages)", quantus_road, ours_road, len(percentages))

    # ---------------------------------------------------------------- complexity
    if "complexity" in groups:
        q_sp = quantus.Sparseness(disable_warnings=True)
        q_cx = quantus.Complexity(disable_warnings=True)

        def quantus_sp():
            return np.asarray(q_sp(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(),
                                   device="cpu", batch_size=BATCH))

        def quantus_cx():
            return np.asarray(q_cx(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(),
                                   device="cpu", batch_size=BATCH))

        theirs = quantus_sp()
        ours = evaluate.sparseness(None, x, a).scores.double().numpy()
        agreement.append(["sparseness (Gini), as defined", relative(ours, theirs)])
        # Quantus divides by the batch's max |a| and adds 1e-7 to every value: Gini * S / (S + n eps)
        s = (np.abs(an) / np.abs(an).max()).reshape(len(an), -1).sum(1)
        agreement.append(["sparseness with Quantus' +1e-7 shift written out",
                          relative(ours * s / (s + n_features * 1e-7), theirs)])
        record_speed("sparseness", quantus_sp, lambda: evaluate.sparseness(None, x, a))
        theirs = quantus_cx()
        agreement.append(["complexity (entropy)",
                          relative(evaluate.complexity(None, x, a).scores, theirs)])
        record_speed("complexity", quantus_cx, lambda: evaluate.complexity(None, x, a))

    # ---------------------------------------------------------------- MPRT
    if "mprt" in groups:
        q_seed = 42
        q_mprt = quantus.MPRT(seed=q_seed, layer_order="top_down", disable_warnings=True)

        def quantus_mprt():
            return q_mprt(model=model, x_batch=xn, y_batch=yn, a_batch=an, softmax=False,
                          device="cpu", batch_size=BATCH, explain_func=lrp_explain_func(composite))

        def quantus_reset(name, module, generator):
            torch.manual_seed(q_seed + 1)
            module.reset_parameters()

        def ours_mprt():
            return evaluate.model_parameter_randomization(model, x, composite, y, similarity="spearman",
                                                          randomize=quantus_reset, batch_size=BATCH)

        theirs, ours = quantus_mprt(), ours_mprt()
        layers = [k for k in theirs if k != "original"]
        agreement.append([f"MPRT Spearman per layer and sample ({len(layers)} layers, top-down)",
                          relative(ours.curves["spearman"].numpy(),
                                   np.stack([theirs[k] for k in layers], axis=1))])
        assert layers == ours.labels, (layers, ours.labels)
        record_speed("MPRT (7 layers, Spearman)", quantus_mprt, ours_mprt)

    header = (f"{datetime.date.today()}, {platform.machine()}, {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}, quantus {quantus.__version__}; shipped digits CNN, "
              f"{args.n} held-out digits, EpsilonPlus relevance, batch {BATCH} in both tools, "
              f"median of {args.repeats} paired repeats.")
    lines = ["## lrp.evaluate vs Quantus 0.6", "", header, "",
             "| agreement | max abs difference / max abs value |", "|---|---|"]
    lines += [f"| {name} | {value:.1e} |" for name, value in agreement]
    lines += ["", "| metric | Quantus s | lrp s | lrp speed-up | forward floor s (Quantus / floor) |",
              "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in speed]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.write:
        path = Path(__file__).with_name("RESULTS.md")
        content = path.read_text()
        marker = "## lrp.evaluate vs Quantus 0.6"
        if marker in content:
            content = content[:content.index(marker)].rstrip() + "\n"
        path.write_text(content.rstrip() + "\n\n" + text)
        print(f"wrote {path}")
    if any(math.isnan(v) for _, v in agreement):
        raise SystemExit("NaN in the agreement figures")


if __name__ == "__main__":
    main()
