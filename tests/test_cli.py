"""The shipped demo model and the ``lrp`` command line.

The command-line tests run ``python -m lrp`` in subprocesses, all started at once
by a module fixture (each spends most of its time importing torch).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lrp
from lrp import cli, demo, gradients
from lrp.deeplift import deeplift
from lrp.features import grid
from lrp.kernel_shap import kernel_shap
from lrp.lime import lime
from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonGammaBox


def shipped_digits():
    with np.load(demo.SAMPLES) as data:
        return data["images"], data["labels"]


def digit_png(path: Path, index: int = 3, dark_on_light: bool = False) -> int:
    """Write a shipped held-out digit as a 64x64 8-bit PNG; return its label."""
    images, labels = shipped_digits()
    pixels = np.round(images[index].astype(np.float32) * 255 / 16).astype(np.uint8)
    if dark_on_light:
        pixels = 255 - pixels
    Image.fromarray(pixels).resize((64, 64), Image.BILINEAR).save(path)
    return int(labels[index])


# --------------------------------------------------------------------------- demo model
def test_demo_model_loads_and_is_accurate_on_shipped_digits():
    model = demo.load_demo_model()
    assert not model.training
    assert 20_000 <= sum(p.numel() for p in model.parameters()) <= 100_000
    images, labels = shipped_digits()
    assert images.shape[1:] == (8, 8) and len(labels) >= 50
    x, y = demo.demo_inputs(len(labels))
    assert x.shape == (len(labels), 1, 32, 32) and torch.equal(y, torch.as_tensor(labels).long())
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.9
    assert 0.9 <= demo.ACCURACY <= 1.0
    assert demo.WEIGHTS.stat().st_size < 1_000_000


def test_demo_inputs_are_normalized_digits():
    x, labels = demo.demo_inputs()
    assert x.shape == (8, 1, 32, 32) and labels.tolist() == list(range(8))
    pixels = x * demo.STD + demo.MEAN
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    with pytest.raises(ValueError):
        demo.demo_inputs(0)


def test_preprocess_matches_training_pipeline_and_inverts_paper_digits():
    images, _ = shipped_digits()
    reference = demo.prepare_digits(images[:1])
    raw = images[0].astype(np.float32) / 16
    assert torch.allclose(demo.preprocess(raw), reference, atol=1e-5)
    assert torch.allclose(demo.preprocess(1 - raw), reference, atol=1e-5)  # auto inversion
    assert torch.allclose(demo.preprocess(np.round(raw * 255).astype(np.uint8)), reference,
                          atol=0.02)
    rgb = Image.fromarray(np.round(255 - raw * 255).astype(np.uint8)).convert("RGB")
    assert torch.allclose(demo.preprocess(rgb), reference, atol=0.02)
    rgba = np.zeros((8, 8, 4), np.uint8)  # black ink on a transparent background
    rgba[..., 3] = np.round(raw * 255).astype(np.uint8)
    assert torch.allclose(demo.preprocess(Image.fromarray(rgba, "RGBA")), reference, atol=0.02)
    assert demo.preprocess(np.zeros((100, 60))).shape == (1, 1, 32, 32)


def test_demo_model_explanation_is_covered_and_focused_on_the_digit():
    model = demo.load_demo_model()
    x, _ = demo.demo_inputs(10)
    composite = EpsilonGammaBox(demo.LOW, demo.HIGH, canonizers=[MergeBatchNorm()])
    explanation = lrp.explain(model, x, composite, audit="strict")
    assert explanation.audit.ok
    relevance = explanation.relevance[:, 0]
    ink = (x[:, 0] * demo.STD + demo.MEAN) > 0.25
    # positive relevance is concentrated on the strokes, not the background
    positive = relevance.clamp(min=0)
    on_ink = (positive * ink).flatten(1).sum(1) / positive.flatten(1).sum(1)
    assert (on_ink > ink.flatten(1).float().mean(1)).all()


# --------------------------------------------------------------------------- composites
@pytest.mark.parametrize("spelling", ["EpsilonGammaBox", "epsilon-gamma-box",
                                      "epsilon_gamma_box", "EPSILONGAMMABOX"])
def test_composite_names_any_spelling(spelling):
    assert cli.composite_name(spelling) == "epsilon-gamma-box"
    assert cli.make_composite(spelling, low=-1.0, high=1.0).name == "EpsilonGammaBox"


def test_every_composite_name_builds():
    for name, preset in cli.COMPOSITES.items():
        composite = cli.make_composite(name)
        assert (composite is None) == (preset is None)
        if composite is not None:
            assert composite.name.split("(")[0] == preset  # CPLRP(gamma=0.25) for cp-lrp-gamma
    with pytest.raises(cli.CLIError, match="valid names: epsilon-gamma-box"):
        cli.composite_name("lrp-zero")


def test_composite_names_give_the_presets():
    """Each command-line name gives the preset built directly (rule trees compared on
    the demo model, BatchNorm fusion as the CLI adds it)."""
    from lrp import composites as C
    expected = {
        "epsilon-gamma-box": lambda c: C.EpsilonGammaBox(-3.0, 3.0, canonizers=c),
        "epsilon-plus": lambda c: C.EpsilonPlus(canonizers=c),
        "epsilon-plus-flat": lambda c: C.EpsilonPlusFlat(canonizers=c),
        "epsilon-alpha2-beta1": lambda c: C.EpsilonAlpha2Beta1(canonizers=c),
        "epsilon-alpha2-beta1-flat": lambda c: C.EpsilonAlpha2Beta1Flat(canonizers=c),
        "excitation-backprop": lambda c: C.ExcitationBackprop(canonizers=c),
        "guided-backprop": lambda c: C.GuidedBackprop(canonizers=c),
        "attn-lrp": lambda c: C.AttnLRP(canonizers=c),
        "cp-lrp": lambda c: C.CPLRP(canonizers=c),
        "cp-lrp-gamma": lambda c: C.CPLRP(gamma=0.25, canonizers=c),
    }
    assert set(cli.COMPOSITES) == set(expected) | {"gradient"}
    model, (x, _) = demo.load_demo_model(), demo.demo_inputs(1)
    for name, build in expected.items():
        got = cli.make_composite(name)
        assert got.tree(model, x) == build([MergeBatchNorm()]).tree(model, x), name
        assert got.attribution == build([]).attribution
    assert cli.make_composite("gradient") is None


def test_model_specs_in_process(tmp_path, capsys):
    assert cli.load_model("demo").is_demo
    assert isinstance(cli.load_model("lrp.demo:load_demo_model").model, demo.DigitsCNN)
    assert cli.main(["inspect", "--model", "torchvision:resnet81"]) == 2
    assert "did you mean resnet18" in capsys.readouterr().err
    missing = tmp_path / "missing.pth"
    assert cli.main(["inspect", "--model", f"torchvision:resnet18:{missing}"]) == 2
    assert f"weights file not found: {missing}" in capsys.readouterr().err
    assert cli.main(["inspect", "--model", str(missing)]) == 2
    assert "model file not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- subprocesses
def _start(args, cwd):
    # one thread each: the cases run concurrently
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "lrp", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run every command-line case concurrently; results by case name."""
    tmp = tmp_path_factory.mktemp("cli")
    label = digit_png(tmp / "digit.png", index=3, dark_on_light=True)
    cases = {
        "demo": ["demo", "--out", tmp / "demo-out"],
        "heatmap": ["heatmap", tmp / "digit.png", "--model", "demo", "--composite",
                    "epsilon-plus-flat", "--out", tmp / "heat-out", "--overlay"],
        "inspect": ["inspect", "--model", "demo", "--composite", "EpsilonPlusFlat"],
        "missing_image": ["heatmap", tmp / "digit.png", tmp / "no-such-digit.png",
                          "--model", "demo", "--out", tmp / "never"],
        "bad_composite": ["heatmap", tmp / "digit.png", "--model", "demo",
                          "--composite", "lrp-zero", "--out", tmp / "never"],
        "bad_model": ["heatmap", tmp / "digit.png", "--model", "no-such-model",
                      "--out", tmp / "never"],
        "bad_method": ["heatmap", tmp / "digit.png", "--model", "demo", "--method", "shap",
                       "--out", tmp / "never"],
        "smoothgrad": ["heatmap", tmp / "digit.png", "--model", "demo", "--method",
                       "smoothgrad", "--out", tmp / "sg-out"],
    }
    procs = {name: _start(args, tmp) for name, args in cases.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err)
    return tmp, label, results


def _open_png(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return image


def test_cli_demo(runs):
    tmp, _, results = runs
    code, out, err = results["demo"]
    assert code == 0, err
    pngs = sorted((tmp / "demo-out").glob("*.png"))
    assert len(pngs) == 11 and (tmp / "demo-out" / "grid.png") in pngs
    for path in pngs:
        image = _open_png(path)
        assert min(image.size) >= 128
        assert str(path.name) in out
    assert "accuracy" in out and "Traceback" not in err


def test_cli_heatmap_on_a_png(runs):
    tmp, label, results = runs
    code, out, err = results["heatmap"]
    assert code == 0, err
    assert f"class {label}" in out  # the dark-on-light digit is inverted and recognized
    for suffix in ("heatmap", "overlay"):  # 256 x 256 maps with a label and a colour bar
        image = _open_png(tmp / "heat-out" / f"digit_{suffix}.png")
        assert image.size[0] > 256 and image.size[1] > 256


DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_cli_prints_class_names(tmp_path, capsys):
    label = digit_png(tmp_path / "digit.png", index=4)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(DIGIT_NAMES) + "\n")
    for spec in (",".join(DIGIT_NAMES), str(names)):
        assert cli.main(["heatmap", str(tmp_path / "digit.png"), "--model", "demo",
                         "--class-names", spec, "--out", str(tmp_path / "out")]) == 0
        out = capsys.readouterr().out
        assert f"class {label} ({DIGIT_NAMES[label]}) (logit" in out
        assert f"predicted {label} ({DIGIT_NAMES[label]})" in out
    assert cli.main(["heatmap", str(tmp_path / "digit.png"), "--model", "demo",
                     "--class-names", "zero,one", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "lrp: error: got 2 output names for a model with 10 outputs\n"


def test_cli_heatmap_with_another_method(runs):
    tmp, label, results = runs
    code, out, err = results["smoothgrad"]
    assert code == 0, err
    assert f"class {label}" in out
    assert min(_open_png(tmp / "sg-out" / "digit_heatmap.png").size) > 256


#: What each ``--method`` must compute, written out with the library's functions.
LIBRARY_METHODS = {
    "deeplift": lambda model, x: deeplift(model, x),
    "gradient": lambda model, x: gradients.gradient(model, x),
    "smoothgrad": lambda model, x: gradients.smoothgrad(model, x, n=32, seed=0),
    "integrated-gradients": lambda model, x: gradients.integrated_gradients(model, x, steps=32),
    "lime": lambda model, x: lime(model, x, features=grid(x, 8), n_samples=1000, seed=0),
    "kernel-shap": lambda model, x: kernel_shap(model, x, features=grid(x, 8), n_samples=1000,
                                                seed=0),
}


def test_cli_method_names_are_the_library_methods():
    assert set(cli.METHODS) == {"lrp"} | set(LIBRARY_METHODS)


@pytest.mark.parametrize("method", sorted(LIBRARY_METHODS))
def test_cli_methods_match_the_library(tmp_path, method, monkeypatch):
    """``--method M`` renders exactly the relevance of the library function."""
    label = digit_png(tmp_path / "digit.png", index=5)
    rendered = []
    monkeypatch.setattr("lrp.image.heatmap", lambda r, *a, **k: rendered.append(r) or
                        Image.new("RGB", (32, 32)))
    assert cli.main(["heatmap", str(tmp_path / "digit.png"), "--model", "demo",
                     "--method", method, "--out", str(tmp_path / "out")]) == 0
    x = demo.preprocess(Image.open(tmp_path / "digit.png"))
    expected = LIBRARY_METHODS[method](demo.load_demo_model(), x)
    assert int(expected.target[0]) == label
    torch.testing.assert_close(rendered[0], expected.relevance[0])


def test_cli_inspect(runs):
    _, _, results = runs
    code, out, err = results["inspect"]
    assert code == 0, err
    assert "DigitsCNN" in out and "-> Flat()" in out and "-> ZPlus()" in out
    assert "coverage audit: every non-linear operation is covered by a rule" in out


@pytest.mark.parametrize("case, message", [
    ("missing_image", "no-such-digit.png"),
    ("bad_composite", "valid names: epsilon-gamma-box, epsilon-plus"),
    ("bad_model", "unknown model spec 'no-such-model'"),
    ("bad_method", "unknown method 'shap'; valid: lrp, deeplift"),
])
def test_cli_errors(runs, case, message):
    tmp, _, results = runs
    code, out, err = results[case]
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp / "never").exists()
