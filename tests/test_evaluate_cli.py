"""``lrp evaluate``: end to end in subprocesses (exit codes, files), and its methods and
numbers against the library functions called directly."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrp import cli, evaluate, explain, gradients
from lrp.canonizers import MergeBatchNorm
from lrp.cli import evaluate as cli_evaluate
from lrp.composites import (CPLRP, AttnLRP, EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat,
                            EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat, ExcitationBackprop,
                            GuidedBackprop)
from lrp.deeplift import deeplift
from lrp.demo import HIGH, LOW, demo_inputs, load_demo_model, shipped_model
from lrp.evaluate.explainers import explain_with

ROOT = Path(__file__).resolve().parents[1]
RUN_ARGS = ["--model", "demo", "-n", "4", "--methods", "epsilon-plus,gradient-x-input,random",
            "--metrics", "AOPC-MoRF,ABPC,Sparseness"]
ERRORS = {
    "method": (["evaluate", "--model", "demo", "--methods", "lrp-magic"], "unknown method"),
    "metric": (["evaluate", "--model", "demo", "--metrics", "AOPC"], "unknown metric"),
    "no-data": (["evaluate", "--model", "torchvision:resnet18"], "needs --images"),
    "n": (["evaluate", "--model", "demo", "-n", "61"], "-n must be between 1 and 60"),
    "patch": (["evaluate", "--model", "demo", "-n", "2", "--methods", "random", "--metrics",
               "ABPC", "--patch-size", "5"], "does not divide"),
    "fill": (["evaluate", "--model", "demo", "--fill", "black"], "unknown fill"),
    "images": (["evaluate", "--model", "demo", "--images", "/nonexistent"], "not a directory"),
}


def _lrp(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "lrp", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both command lines started at once (each spends most of its time importing torch)."""
    tmp = tmp_path_factory.mktemp("evaluate")
    procs = {"ok": _lrp(["evaluate", *RUN_ARGS, "--out", str(tmp / "out")], tmp),
             "no-data": _lrp(ERRORS["no-data"][0], tmp)}
    results = {k: (p.wait(timeout=600), *p.communicate()) for k, p in procs.items()}
    return tmp, results


def test_cli_evaluate_writes_table_csv_and_curves(runs):
    tmp, results = runs
    code, out, err = results["ok"]
    assert code == 0, err
    assert "| epsilon-plus |" in out and "ABPC ↑" in out
    folder = tmp / "out"
    assert (folder / "curves.png").stat().st_size > 5000
    md = (folder / "evaluation.md").read_text()
    assert "| random |" in md and "Sparseness ↑" in md
    with (folder / "evaluation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["epsilon-plus", "gradient-x-input", "random"]
    # the CLI's numbers are the library's, computed directly
    model = load_demo_model()
    x, labels = demo_inputs(4)
    direct = {
        "epsilon-plus": explain(model, x, EpsilonPlus(canonizers=[MergeBatchNorm()]), labels).relevance,
        "gradient-x-input": gradients.gradient_x_input(model, x, target=labels).relevance,
    }
    for name, relevance in direct.items():
        row = next(r for r in rows if r["method"] == name)
        assert float(row["Sparseness"]) == pytest.approx(evaluate.sparseness(None, x, relevance).mean(),
                                                         rel=1e-5)
        abpc = evaluate.abpc(model, x, relevance, labels, patch_size=4, generator=0)
        assert float(row["ABPC"]) == pytest.approx(abpc.mean(), rel=1e-4, abs=1e-5)


def test_cli_evaluate_error_in_a_subprocess(runs):
    code, out, err = runs[1]["no-data"]
    assert code == 2 and err.strip().splitlines() == [
        "lrp: error: --model torchvision:resnet18 needs --images DIR: only the shipped models "
        "(digits, fashion, vit, demo) come with data to evaluate on"]


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_cli_evaluate_errors(case, capsys, tmp_path):
    args, message = ERRORS[case]
    assert cli.main(args + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_evaluate_methods_are_the_library_methods():
    model = load_demo_model()
    x, labels = demo_inputs(3)
    names = cli_evaluate.method_names()
    assert len(names) == 15 and names[-1] == "random"
    chosen = cli_evaluate.methods(names, LOW, HIGH)
    mbn = [MergeBatchNorm()]
    direct = {
        "epsilon-gamma-box": lambda: explain(model, x, EpsilonGammaBox(LOW, HIGH, canonizers=mbn), labels),
        "epsilon-plus": lambda: explain(model, x, EpsilonPlus(canonizers=mbn), labels),
        "epsilon-plus-flat": lambda: explain(model, x, EpsilonPlusFlat(canonizers=mbn), labels),
        "epsilon-alpha2-beta1": lambda: explain(model, x, EpsilonAlpha2Beta1(canonizers=mbn), labels),
        "epsilon-alpha2-beta1-flat": lambda: explain(model, x, EpsilonAlpha2Beta1Flat(canonizers=mbn),
                                                     labels),
        "excitation-backprop": lambda: explain(model, x, ExcitationBackprop(canonizers=mbn), labels),
        "guided-backprop": lambda: explain(model, x, GuidedBackprop(canonizers=mbn), labels),
        "attn-lrp": lambda: explain(model, x, AttnLRP(canonizers=mbn), labels),
        "cp-lrp": lambda: explain(model, x, CPLRP(canonizers=mbn), labels),
        "cp-lrp-gamma": lambda: explain(model, x, CPLRP(gamma=0.25, canonizers=mbn), labels),
        "gradient-x-input": lambda: gradients.gradient_x_input(model, x, target=labels),
        "integrated-gradients": lambda: gradients.integrated_gradients(model, x, target=labels, steps=32),
        "deeplift": lambda: deeplift(model, x, labels),
        "smoothgrad": lambda: gradients.smoothgrad(model, x, target=labels, n=32, seed=0),
    }
    assert set(direct) | {"random"} == set(chosen)
    for name, fn in direct.items():
        ours = explain_with(chosen[name], model, x, labels)
        assert torch.allclose(ours, fn().relevance, atol=1e-6), name
    first = explain_with(chosen["random"], model, x, labels)
    again = explain_with(cli_evaluate.methods(["random"], LOW, HIGH)["random"], model, x, labels)
    assert torch.equal(first, again) and first.shape == x.shape


def test_every_shipped_model_brings_its_data():
    assert {"digits", "demo", "fashion"} <= set(cli_evaluate.shipped_specs())
    for spec in cli_evaluate.shipped_specs():
        x, labels, low, high = cli_evaluate._shipped(spec, 2)
        direct = shipped_model(spec)
        assert torch.equal(x, direct.inputs(2)[0]) and torch.equal(labels, direct.inputs(2)[1])
        assert (low, high) == (direct.low, direct.high)
    x, labels, low, high = cli_evaluate._shipped("demo", None)
    assert torch.equal(x, demo_inputs(60)[0]) and (low, high) == (LOW, HIGH)


def test_default_patch_size_divides_the_image():
    assert [cli_evaluate.default_patch_size(s) for s in [(32, 32), (28, 28), (224, 224), (30, 20), (7, 7)]] \
        == [4, 4, 28, 2, 1]


def test_cli_evaluate_fashion_is_the_library_on_the_shipped_photos(capsys, tmp_path):
    args = ["evaluate", "--model", "fashion", "-n", "3", "--methods", "epsilon-plus,random",
            "--metrics", "AOPC-MoRF,Sparseness", "--out", str(tmp_path)]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert "patch size 4" in capsys.readouterr().out
    with (tmp_path / "evaluation.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["method"] == "epsilon-plus")
    fashion = shipped_model("fashion")
    model = fashion.load()
    x, labels = fashion.inputs(3)
    relevance = explain(model, x, EpsilonPlus(canonizers=[MergeBatchNorm()]), labels).relevance
    aopc = evaluate.pixel_flipping(model, x, relevance, labels, patch_size=4, generator=0)
    assert float(row["AOPC-MoRF"]) == pytest.approx(aopc.mean(), rel=1e-4, abs=1e-5)
    assert float(row["Sparseness"]) == pytest.approx(evaluate.sparseness(None, x, relevance).mean(),
                                                     rel=1e-5)
    assert cli.main(["evaluate", "--model", "fashion", "-n", "61", "--out", str(tmp_path)]) == 2
    assert "-n must be between 1 and 60 for --model fashion" in capsys.readouterr().err
