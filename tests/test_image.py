"""Tests for lrp.image: colormaps, normalization, reductions, heatmap/overlay/grid, PNG I/O."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrp import image as limg
from lrp.image import (COLORMAPS, Colormap, colormap, grid, heatmap, normalize, overlay,
                       reduce_channels, save)

RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def px(img, x, y):
    return tuple(np.asarray(img)[y, x].tolist())


# ------------------------------------------------------------------ module hygiene
def test_module_imports_neither_torch_nor_matplotlib():
    path = Path(limg.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('img', {str(path)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['img'] = m\n"
        "spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ colormaps
@pytest.mark.parametrize("name", list(COLORMAPS))
def test_registered_luts(name):
    cm = colormap(name)
    assert isinstance(cm, Colormap) and cm.name == name
    assert cm.lut.shape == (256, 3) and cm.lut.dtype == np.uint8
    assert cm.diverging == (name in ("bwr", "coldnhot", "seismic"))
    with pytest.raises(ValueError):
        cm.lut[0, 0] = 1  # read-only


def test_bwr_and_coldnhot_anchor_colors():
    bwr, cnh = colormap("bwr"), colormap("coldnhot")
    assert bwr([0.0, 0.5, 1.0]).tolist() == [list(BLUE), list(WHITE), list(RED)]
    assert cnh(0.5).tolist() == list(BLACK)
    assert cnh(1.0).tolist() == list(WHITE)
    assert cnh(0.0).tolist() == [0, 255, 255]  # cyan for most negative


def test_spec_gray_ramp():
    cm = colormap("000,fff")
    assert not cm.diverging
    assert cm(0.0).tolist() == [0, 0, 0]
    assert cm(1.0).tolist() == [255, 255, 255]
    mid = cm(0.5)
    assert mid[0] == mid[1] == mid[2] and mid[0] in (127, 128)
    assert np.array_equal(cm.lut[:, 0], np.arange(256))


def test_spec_forms_are_equivalent():
    a = colormap("0:00f,0.5:fff,1:f00")
    b = colormap("00f, fff, f00")
    c = colormap("0:#0000ff,0.5:#FFFFFF,1:#ff0000")
    assert np.array_equal(a.lut, b.lut) and np.array_equal(a.lut, c.lut)
    assert np.array_equal(a.lut, COLORMAPS["bwr"].lut)
    assert colormap("00f,fff,f00", diverging=True).diverging
    assert not colormap("bwr", diverging=False).diverging


def test_spec_holds_end_colors_beyond_stops():
    cm = colormap("0.25:000,0.75:fff")
    assert cm(0.0).tolist() == [0, 0, 0] and cm(0.1).tolist() == [0, 0, 0]
    assert cm(1.0).tolist() == [255, 255, 255]


@pytest.mark.parametrize("spec, match", [
    ("nope", "unknown colormap"),
    ("000", "unknown colormap"),
    ("0:000", "at least two"),
    ("00g,fff", "bad hex"),
    ("0000,fff", "bad hex"),
    ("0:000,1.5:fff", "outside"),
    ("-0.1:000,1:fff", "outside"),
    ("0:000,nan:fff", "outside"),
    ("0.5:000,0.2:fff", "increasing"),
    ("0:000,0:fff", "increasing"),
    ("0:000,fff", "mixes"),
    ("x:000,1:fff", "bad position"),
    ("000,,fff", "at least two"),
    ("0:000,0.001:888,1:fff", "closer"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        colormap(spec)


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError, match="bwr"):
        colormap("jet")


# ------------------------------------------------------------------ normalization
def test_normalize_modes():
    r = np.array([-2.0, 0.0, 1.0, 4.0])
    assert np.allclose(normalize(r, "symmetric"), [0.25, 0.5, 0.625, 1.0])
    assert np.allclose(normalize(r, "absolute"), [0.5, 0.0, 0.25, 1.0])
    assert np.allclose(normalize(r, "unaligned"), [0.0, 2 / 6, 3 / 6, 1.0])


def test_normalize_degenerate_maps():
    z = np.zeros((3, 3))
    assert np.all(normalize(z, "symmetric") == 0.5)
    assert np.all(normalize(z, "absolute") == 0.0)
    assert np.all(normalize(z, "unaligned") == 0.5)
    c = np.full((3, 3), -7.0)
    assert np.all(normalize(c, "symmetric") == 0.0)
    assert np.all(normalize(c, "absolute") == 1.0)
    assert np.all(normalize(c, "unaligned") == 0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_raises(bad):
    r = np.ones((4, 4))
    r[1, 2] = bad
    for fn in (lambda: normalize(r), lambda: heatmap(r), lambda: reduce_channels(r[None])):
        with pytest.raises(ValueError, match="NaN"):
            fn()


@pytest.mark.parametrize("value", [1e30, -1e30, 1e-30, 1e300, 5e-324])
def test_extreme_values_finite(value):
    r = np.array([[value, 0.0], [value / 2, -value]])
    for mode in ("symmetric", "absolute", "unaligned"):
        out = normalize(r, mode)
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    for how in ("sum", "norm", "max-abs"):
        assert np.isfinite(reduce_channels(np.stack([r, r, r]), how)).all()
    img = np.asarray(heatmap(np.stack([r, r, r])))
    assert img.dtype == np.uint8


def test_percentile_clipping_saturates_outliers():
    r = np.linspace(0.0, 1.0, 1000).reshape(10, 100)
    r[0, 0] = 1000.0  # one huge outlier
    plain = normalize(r, "absolute")
    clipped = normalize(r, "absolute", clip_percentile=99.0)
    assert plain[5, 50] < 0.01  # washed out by the outlier
    assert clipped[5, 50] > 0.4
    assert clipped[0, 0] == 1.0
    assert (clipped == 1.0).sum() >= 10  # top 1% saturates
    img = heatmap(r, "gray", clip_percentile=99.0)
    assert px(img, 0, 0) == WHITE and px(img, 99, 9) == WHITE
    with pytest.raises(ValueError, match="clip_percentile"):
        normalize(r, clip_percentile=0)


def test_normalize_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        normalize(np.ones(3), "relative")


# ------------------------------------------------------------------ channel reductions
def test_reduce_channels_hand_computed():
    r = np.array([[[3.0, -1.0]], [[-4.0, 0.5]], [[0.0, 2.0]]])  # (C=3, H=1, W=2)
    assert np.allclose(reduce_channels(r, "sum"), [[-1.0, 1.5]])
    assert np.allclose(reduce_channels(r, "norm"), [[5.0, np.sqrt(1 + 0.25 + 4)]])
    assert np.allclose(reduce_channels(r, "max-abs"), [[-4.0, 2.0]])
    assert reduce_channels(r).shape == (1, 2)
    batched = np.stack([r, -r])  # (N, C, H, W)
    assert np.allclose(reduce_channels(batched, "max-abs"), [[[-4.0, 2.0]], [[4.0, -2.0]]])
    hw = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(reduce_channels(hw, "norm"), hw)
    with pytest.raises(ValueError, match="reduction"):
        reduce_channels(r, "mean")
    with pytest.raises(ValueError, match="shape"):
        reduce_channels(np.ones(5))


def test_torch_tensor_input():
    torch = pytest.importorskip("torch")
    t = torch.tensor([[[1.0, -1.0]], [[1.0, 0.0]]], requires_grad=True)
    assert np.allclose(reduce_channels(t), [[2.0, -1.0]])
    assert heatmap(t.to(torch.bfloat16)).size == (2, 1)


# ------------------------------------------------------------------ heatmap
def test_heatmap_bwr_known_pixels():
    r = np.array([[2.0, -2.0, 0.0, 1.0]])
    img = heatmap(r)
    assert img.mode == "RGB" and img.size == (4, 1)
    assert px(img, 0, 0) == RED
    assert px(img, 1, 0) == BLUE
    assert px(img, 2, 0) == WHITE
    assert px(img, 3, 0) == tuple(colormap("bwr")(0.75).tolist())


def test_heatmap_coldnhot_zero_is_black():
    r = np.array([[0.0, 3.0, -3.0]])
    img = heatmap(r, "coldnhot")
    assert px(img, 0, 0) == BLACK and px(img, 1, 0) == WHITE and px(img, 2, 0) == (0, 255, 255)


def test_heatmap_degenerate_maps():
    assert np.all(np.asarray(heatmap(np.zeros((3, 3)))) == 255)  # zero -> white
    assert np.all(np.asarray(heatmap(np.zeros((3, 3)), "coldnhot")) == 0)  # zero -> black
    assert np.all(np.asarray(heatmap(np.zeros((3, 3)), "gray")) == 0)
    const = heatmap(np.full((2, 2), 0.3))
    assert all(px(const, x, y) == RED for x in range(2) for y in range(2))
    pos = heatmap(np.array([[0.0, 1.0, 2.0]]))  # one-signed
    assert px(pos, 0, 0) == WHITE and px(pos, 2, 0) == RED
    neg_abs = heatmap(np.array([[0.0, -1.0, -2.0]]), "gray")  # sequential -> |R|
    assert px(neg_abs, 0, 0) == BLACK and px(neg_abs, 2, 0) == WHITE


def test_heatmap_reduces_channels_and_batch_of_one():
    r = np.zeros((3, 2, 2))
    r[0, 0, 0], r[1, 0, 0] = 1.0, 1.0
    r[2, 1, 1] = -2.0
    img = heatmap(r[None])
    assert img.size == (2, 2)
    assert px(img, 0, 0) == RED and px(img, 1, 1) == BLUE and px(img, 1, 0) == WHITE
    assert px(heatmap(r, reduce="norm", mode="symmetric"), 1, 1) == RED
    with pytest.raises(ValueError, match="grid"):
        heatmap(np.zeros((2, 3, 2, 2)))


def test_heatmap_gray_L():
    r = np.array([[0.0, 0.5, 1.0]])
    img = heatmap(r, "gray", rgb=False)
    assert img.mode == "L"
    assert np.asarray(img).tolist() == [[0, 128, 255]]
    rgb = np.asarray(heatmap(r, "gray"))
    assert np.array_equal(rgb[..., 0], np.asarray(img))


# ------------------------------------------------------------------ overlay
def test_overlay_alpha_extremes_uint8():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    r = rng.normal(size=(6, 5))
    out0 = overlay(r, image, alpha=0.0)
    assert out0.mode == "RGB" and out0.size == (5, 6)
    assert np.array_equal(np.asarray(out0), image)
    full = overlay(r, image, alpha=1.0, blend="constant")
    assert np.array_equal(np.asarray(full), np.asarray(heatmap(r)))
    half = np.asarray(overlay(r, image, alpha=0.5, blend="constant")).astype(int)
    expected = np.rint((image.astype(float) + np.asarray(heatmap(r)).astype(float)) / 2)
    assert np.abs(half - expected).max() == 0
    with pytest.raises(ValueError, match="alpha"):
        overlay(r, image, alpha=1.5)


def test_overlay_resizes_heatmap_to_image():
    image = Image.new("RGB", (20, 10), (10, 20, 30))
    out = overlay(np.ones((5, 10)), image, alpha=1.0)
    assert out.size == (20, 10)
    assert np.all(np.asarray(out) == np.array(RED))


def test_overlay_grayscale_images():
    gray = np.full((4, 4), 100, dtype=np.uint8)
    r = np.zeros((4, 4))
    for img in (gray, gray[..., None], Image.fromarray(gray), np.full((1, 4, 4), 100 / 255)):
        out = overlay(r, img, alpha=0.0)
        assert out.size == (4, 4) and np.all(np.asarray(out) == 100)


def test_overlay_denormalizes_float_chw():
    x = np.zeros((3, 2, 2))
    x[:, 0, 0] = [1.0, -1.0, 5.0]
    mean, std = [0.4, 0.6, 0.5], [0.2, 0.4, 0.2]
    out = overlay(np.zeros((2, 2)), x, alpha=0.0, mean=mean, std=std)
    # (1*0.2+0.4, -1*0.4+0.6, 5*0.2+0.5 -> clipped 1) * 255
    assert px(out, 0, 0) == (153, 51, 255)
    assert px(out, 1, 1) == (102, 153, 128)  # mean * 255, 127.5 rounds to even 128
    out1 = overlay(np.zeros((2, 2)), x, alpha=1.0, blend="constant", mean=mean, std=std)
    assert px(out1, 0, 0) == WHITE  # bwr zero
    with pytest.raises(ValueError, match="mean/std"):
        overlay(np.zeros((2, 2)), Image.new("RGB", (2, 2)), mean=mean, std=std)


def test_overlay_torch_image():
    torch = pytest.importorskip("torch")
    x = torch.full((1, 3, 3, 3), 0.0)
    out = overlay(torch.zeros(1, 3, 3, 3), x, alpha=0.0, mean=torch.tensor([0.2, 0.4, 0.6]),
                  std=torch.tensor([0.5, 0.5, 0.5]))
    assert px(out, 1, 1) == (51, 102, 153)


# ------------------------------------------------------------------ grid
def test_grid_size_and_placement():
    maps = [np.full((8, 8), v) for v in (1.0, -1.0, 0.0, 2.0, -3.0)]
    g = grid(maps, ncols=3)
    assert g.mode == "RGB" and g.size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)
    assert px(g, 2, 2) == RED and px(g, 2 + 10, 2) == BLUE and px(g, 2 + 20, 2) == WHITE
    assert px(g, 0, 0) == WHITE  # padding background
    assert px(g, 2 + 10, 2 + 10) == BLUE  # 5th cell: row 1, col 1


def test_grid_labels_mixed_items_and_batches():
    maps = [np.random.default_rng(i).normal(size=(3, 8, 8)) for i in range(4)]
    maps.append(Image.new("L", (16, 16), 200))
    labels = ["a", "very long label that cannot fit", "", "Ω", "img"]
    g = grid(maps, labels=labels, ncols=3, cmap="coldnhot")
    assert g.size[0] == 3 * 8 + 4 * 2 and g.size[1] > 2 * 8 + 3 * 2
    batch = np.random.default_rng(0).normal(size=(5, 3, 6, 6))
    g2 = grid(batch, cell_size=12, pad=0)
    assert g2.size == (3 * 12, 2 * 12)  # default ncols = ceil(sqrt(5)) = 3
    with pytest.raises(ValueError, match="labels"):
        grid(maps, labels=["x"])
    with pytest.raises(ValueError, match="N, C, H, W"):
        grid(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="ncols"):
        grid(maps, ncols=0)


# ------------------------------------------------------------------ saving
@pytest.mark.parametrize("rgb", [True, False])
def test_png_round_trip(tmp_path, rgb):
    r = np.random.default_rng(1).normal(size=(3, 9, 7))
    img = heatmap(r, "magma", rgb=rgb)
    path = save(img, tmp_path / "sub" / "map.png")
    with Image.open(path) as back:
        assert back.format == "PNG" and back.mode == ("RGB" if rgb else "L")
        assert np.array_equal(np.asarray(back), np.asarray(img))


def test_save_without_suffix_is_png(tmp_path):
    g = grid([np.eye(4), -np.eye(4)], labels=["a", "b"])
    path = save(g, tmp_path / "grid")
    with Image.open(path) as back:
        assert back.format == "PNG" and np.array_equal(np.asarray(back), np.asarray(g))
    with pytest.raises(TypeError, match="heatmap"):
        save(np.zeros((2, 2)), tmp_path / "x.png")
