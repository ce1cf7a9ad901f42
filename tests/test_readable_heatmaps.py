"""Heatmaps people can read (issue 15, item 4).

Labels and colour bars are found in the PNGs by their pixels: the label text as
Pillow renders it directly, the colour bar as the colormap function evaluated at
the bar's rows.  The overlay is checked against its formula written out, 16-bit
images against a hand computation, notices and errors in the command's output.
"""
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFont
from torch import nn

import lrp
from lrp import cli, models
from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonGammaBox
from lrp.demo import fashion, gray_pixels
from lrp.image import FONT_SIZE, annotate, colormap, heatmap, overlay, value_range

NEAREST = getattr(Image, "Resampling", Image).NEAREST


# --------------------------------------------------------------------------- pixel search
def find(haystack: np.ndarray, needle: np.ndarray):
    """Top-left ``(y, x)`` of an exact copy of ``needle`` in ``haystack``, else None."""
    h, w = needle.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view
    for y in range(haystack.shape[0] - h + 1):
        rows = windows(haystack[y:y + h], (h, w, 3))[0, :, 0]  # (X, h, w, 3)
        hits = np.flatnonzero((rows == needle).all(axis=(1, 2, 3)))
        if len(hits):
            return y, int(hits[0])
    return None


def text_pixels(text: str) -> np.ndarray:
    """``text`` in black on white with Pillow's default font, cropped to the ink."""
    font = ImageFont.load_default(size=FONT_SIZE)
    canvas = Image.new("RGB", (20 + int(font.getlength(text)), 60), (255, 255, 255))
    ImageDraw.Draw(canvas).text((10, 10), text, fill=(0, 0, 0), font=font)
    arr = np.asarray(canvas)
    ink = np.argwhere((arr != 255).any(-1))
    (y0, x0), (y1, x1) = ink.min(0), ink.max(0)
    return arr[y0:y1 + 1, x0:x1 + 1]


def bar_pixels(cmap: str, height: int) -> np.ndarray:
    """The colour-bar column: row y has ``cmap(1 - y / (height - 1))``."""
    return colormap(cmap)(1 - np.arange(height) / (height - 1))[:, None, :]


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


# --------------------------------------------------------------------------- lrp.image
@pytest.mark.parametrize("cmap", ["bwr", "coldnhot", "hot"])
def test_annotate_draws_label_and_colorbar_of_the_colormap(cmap):
    r = np.random.default_rng(0).normal(size=(20, 30))
    r[3, 4] = 5.0
    image = heatmap(r, cmap).resize((150, 100), NEAREST)
    low, high = value_range(r, cmap)
    expected = (-5.0, 5.0) if colormap(cmap).diverging else (0.0, 5.0)
    assert (low, high) == expected
    figure = np.asarray(annotate(image, "class 3 (Dress)\nlogit 4.2", cmap=cmap, values=(low, high)))
    assert find(figure, np.asarray(image)) is not None  # the heatmap itself, unchanged
    assert find(figure, text_pixels("class 3 (Dress)")) is not None
    assert find(figure, text_pixels("logit 4.2")) is not None
    assert find(figure, bar_pixels(cmap, 100)) is not None
    assert find(figure, text_pixels("5")) is not None  # top of the scale
    bare = np.asarray(annotate(image))
    assert bare.shape[0] < figure.shape[0] and bare.shape[1] < figure.shape[1]
    assert find(bare, bar_pixels(cmap, 100)) is None


def test_value_range_follows_clipping_and_unaligned_mode():
    r = np.linspace(-1, 3, 101).reshape(1, 101)
    p = np.percentile(np.abs(r), 90)
    assert value_range(r, "bwr", clip_percentile=90) == pytest.approx((-p, p))
    assert value_range(r, "bwr", mode="unaligned") == pytest.approx((-1, 3))
    assert value_range(np.stack([r, r]), "hot") == pytest.approx((0, 6))  # channels summed


def test_overlay_alpha_follows_relevance_magnitude():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(12, 16))
    base = rng.integers(0, 256, size=(12, 16, 3)).astype(np.uint8)
    heat = np.asarray(heatmap(r, "bwr"), dtype=np.float64)
    for alpha, clip in [(1.0, None), (0.7, None), (1.0, 80)]:
        scale = np.abs(r).max() if clip is None else np.percentile(np.abs(r), clip)
        a = alpha * np.minimum(np.abs(r) / scale, 1.0)[..., None]
        heat = np.asarray(heatmap(r, "bwr", clip_percentile=clip), dtype=np.float64)
        expected = (1 - a) * base + a * heat
        got = np.asarray(overlay(r, base, alpha=alpha, clip_percentile=clip)).astype(float)
        assert np.abs(got - expected).max() <= 0.5 + 1e-9
    # the strongest pixel is the heatmap colour, a zero-relevance pixel the photo
    r[5, 5], r[0, 0] = 100.0, 0.0
    got = np.asarray(overlay(r, base))
    assert np.array_equal(got[5, 5], np.asarray(heatmap(r))[5, 5])
    assert np.array_equal(got[0, 0], base[0, 0])
    const = np.asarray(overlay(r, base, blend="constant")).astype(float)
    assert np.abs(const - (0.5 * base + 0.5 * np.asarray(heatmap(r)))).max() <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="blend"):
        overlay(r, base, blend="max")


# --------------------------------------------------------------------------- 16-bit images
def test_16_bit_grayscale_png_is_scaled_by_its_bit_depth(tmp_path):
    values = (np.arange(32 * 32).reshape(32, 32) * 61 % 65536).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        image.load()
        assert image.mode == "I;16"
        np.testing.assert_allclose(gray_pixels(image), values / 65535.0, atol=1e-7)
        prep = cli.Preprocessing((32, 32), cli.IMAGENET_MEAN, cli.IMAGENET_STD, False)
        x = prep(image)
    mean = np.array(cli.IMAGENET_MEAN)[:, None, None]
    std = np.array(cli.IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(x[0].numpy(), (values / 65535.0 - mean) / std, atol=1e-5)
    assert (gray_pixels(Image.fromarray(values)) == 1).mean() < 0.01  # was 99.7 % white
    np.testing.assert_allclose(gray_pixels(values), values / 65535.0, atol=1e-7)  # arrays too


# --------------------------------------------------------------------------- library errors
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        return self.net(x)


def test_errors_name_the_input_shape_and_target():
    model = Tiny().eval()
    with pytest.raises(ValueError, match=r"inputs of shape \(2, 4, 16, 16\)"):
        lrp.explain(model, torch.randn(2, 4, 16, 16), EpsilonGammaBox(-1.0, 1.0))
    with pytest.raises(ValueError, match=r"inputs of shape \(2, 4, 16, 16\):"):
        lrp.explain(model, torch.randn(2, 4, 16, 16))
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"target has no classes \(shape \(0,\)\)"):
        lrp.explain(model, x, target=[])
    with pytest.raises(TypeError, match="target 'cat' is a string; give class indices"):
        lrp.explain(model, x, target="cat")
    with pytest.raises(ValueError, match=r"target has no classes \(shape \(4, 0\)\)"):
        lrp.explain(model, x, target=torch.zeros(4, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="target function returned NaN"):
        lrp.explain(model, x, target=lambda out: out * float("nan"))
    with pytest.raises(TypeError, match="class indices"):
        lrp.gradient(model, x, target="cat")


# --------------------------------------------------------------------------- torchvision seeds
def test_torchvision_without_weights_is_seeded_and_says_so():
    state = torch.get_rng_state()
    first = models.load_model("torchvision:resnet18")
    second = models.load_model("torchvision:resnet18")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    torch.manual_seed(models.RANDOM_WEIGHTS_SEED)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    for key, value in reference.items():
        assert torch.equal(first.model.state_dict()[key], value), key
        assert torch.equal(second.model.state_dict()[key], value), key
    assert "random weights (seed 0)" in first.notice
    assert models.load_model("fashion").notice is None


def test_help_states_the_seed(capsys):
    with pytest.raises(SystemExit):
        cli.main(["heatmap", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "without WEIGHTS: random weights initialised with seed 0" in out


def test_inspect_prints_per_channel_bounds_with_shape_and_range(capsys):
    assert cli.main(["inspect", "--model", "torchvision:resnet18", "--size", "32", "32"]) == 0
    low = (0 - np.array(cli.IMAGENET_MEAN)) / np.array(cli.IMAGENET_STD)
    high = (1 - np.array(cli.IMAGENET_MEAN)) / np.array(cli.IMAGENET_STD)
    out = capsys.readouterr().out
    assert (f"ZBox(low=tensor(shape (3,), range [{low.min():.4g}, {low.max():.4g}]), "
            f"high=tensor(shape (3,), range [{high.min():.4g}, {high.max():.4g}]))") in out


# --------------------------------------------------------------------------- the CLI
ZERO_HEAD = '''
import pathlib
from torch import nn

def build():
    pathlib.Path("model-was-built").touch()
    head = nn.Linear(4, 5)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
'''


def _start(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(Path(lrp.__file__).parents[1]))
    return subprocess.Popen([sys.executable, "-m", "lrp", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _in_process(args, cwd):
    """``lrp ARGS`` in this process (torch is imported already): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(sys, "path", list(sys.path))  # factory specs add the cwd
        mp.delitem(sys.modules, "zero_head", raising=False)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


#: Cases run as real processes (exit status, no traceback); the others run in-process.
SUBPROCESS = ("bad_target",)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The command-line cases; results by case name."""
    tmp = tmp_path_factory.mktemp("readable")
    images, labels = fashion.MODEL.raw_samples()
    Image.fromarray(255 - images[1]).save(tmp / "trouser.png")  # dark on white, as a photo
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(tmp / "gray.png")
    (tmp / "zero_head.py").write_text(ZERO_HEAD)
    (tmp / "a-file").write_text("not a directory")
    errs = tmp / "errs"  # the --out errors run here: their model must never be built
    errs.mkdir()
    (errs / "zero_head.py").write_text(ZERO_HEAD)
    cases = {
        "demo": ["demo", "--model", "fashion", "-n", "2", "--out", tmp / "demo"],
        "demo_bare": ["demo", "--model", "fashion", "-n", "2", "--no-label", "--no-colorbar",
                      "--out", tmp / "demo-bare"],
        "overlay": ["heatmap", tmp / "trouser.png", "--model", "fashion", "--overlay",
                    "--out", tmp / "overlay"],
        "torchvision": ["heatmap", tmp / "gray.png", "--model", "torchvision:resnet18", "--size",
                        "32", "32", "--out", tmp / "tv"],
        "zero_head": ["heatmap", tmp / "gray.png", "--model", "zero_head:build", "--size", "16",
                      "16", "--out", tmp / "zero"],
        "out_is_file": ["heatmap", tmp / "gray.png", "--model", "zero_head:build",
                        "--out", tmp / "a-file"],
        "out_in_file": ["demo", "--out", tmp / "a-file" / "sub"],
        "out_unwritable": ["heatmap", tmp / "gray.png", "--model", "zero_head:build",
                           "--out", "/proc/lrp-heatmaps"],
        "bad_target": ["heatmap", tmp / "trouser.png", "--model", "fashion", "--target", "12",
                       "--out", tmp / "never"],
        "bad_channels": ["heatmap", tmp / "gray.png", "--model", "zero_head:build",
                         "--grayscale", "--size", "16", "16", "--out", tmp / "never"],
    }
    procs = {name: _start(cases[name], tmp) for name in SUBPROCESS}
    results = {name: _in_process(args, errs if name.startswith("out_") else tmp)
               for name, args in cases.items() if name not in SUBPROCESS}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err)
    return tmp, results


def test_cli_demo_pngs_carry_label_and_colorbar(runs):
    tmp, results = runs
    code, out, err = results["demo"]
    assert code == 0, err
    model = fashion.load_fashion_model()
    x, labels = fashion.fashion_inputs(2)
    composite = EpsilonGammaBox(fashion.LOW, fashion.HIGH, canonizers=[MergeBatchNorm()])
    explanation = lrp.explain(model, x, composite)
    for i in range(2):
        pred = int(explanation.output[i].argmax())
        true_name, pred_name = fashion.CLASS_NAMES[int(labels[i])], fashion.CLASS_NAMES[pred]
        [path] = (tmp / "demo").glob(f"fashion_{i:02d}_*.png")
        figure = png(path)
        assert find(figure, text_pixels(f"true {true_name}, predicted {pred_name}")) is not None
        logit = float(explanation.output[i, pred])
        assert find(figure, text_pixels(f"explains {pred_name}, logit {logit:.4g} "
                                        "(EpsilonGammaBox)")) is not None
        assert find(figure, bar_pixels("bwr", 280)) is not None  # 28 px enlarged 10x
        high = value_range(explanation.relevance[i], "bwr")[1]
        assert find(figure, text_pixels(f"{high:.3g}")) is not None
        # with --no-label --no-colorbar: just the enlarged heatmap of that relevance
        [bare] = (tmp / "demo-bare").glob(f"fashion_{i:02d}_*.png")
        expected = np.asarray(heatmap(explanation.relevance[i]).resize((280, 280), NEAREST))
        got = png(bare)
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected).max() <= 2  # float noise across processes
        assert find(got, bar_pixels("bwr", 280)) is None


def test_cli_overlay_label_names_the_class(runs):
    tmp, results = runs
    code, out, err = results["overlay"]
    assert code == 0, err
    assert "class 1 (Trouser)" in out
    for suffix in ("heatmap", "overlay"):
        figure = png(tmp / "overlay" / f"trouser_{suffix}.png")
        assert find(figure, text_pixels("trouser.png: predicted 1 (Trouser)")) is not None
        assert find(figure, bar_pixels("bwr", 280)) is not None


def test_cli_torchvision_random_weights_notice(runs):
    _, results = runs
    code, out, err = results["torchvision"]
    assert code == 0, err
    notices = [line for line in err.splitlines() if line.startswith("lrp: notice:")]
    assert notices == ["lrp: notice: torchvision resnet18 without a weights file: random weights "
                       "(seed 0), so the heatmap shows no trained decision; give "
                       "torchvision:resnet18:WEIGHTS.pth for a trained model"]


def test_cli_constant_output_notice(runs):
    tmp, results = runs
    code, out, err = results["zero_head"]
    assert code == 0, err
    assert "gray.png: the model gives every class the same output (0), so the relevance is zero" in err
    assert len([line for line in err.splitlines() if "notice" in line]) == 1


@pytest.mark.parametrize("case, message", [
    ("out_is_file", "is an existing file; give a directory"),
    ("out_in_file", "is inside the file"),
    ("out_unwritable", "cannot write to --out /proc/lrp-heatmaps"),
    ("bad_target", "target out of range: the model has 10 outputs, got targets [12]"),
    ("bad_channels", "the model's forward failed on inputs of shape (1, 1, 16, 16)"),
])
def test_cli_errors_are_one_line_with_exit_code_2(runs, case, message):
    tmp, results = runs
    code, out, err = results[case]
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    if case.startswith("out_"):
        assert not (tmp / "errs" / "model-was-built").exists()  # before any model was built
    assert not (tmp / "never").exists()
