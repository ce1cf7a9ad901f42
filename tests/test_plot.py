"""Tests for lrp.plot: per-sample bars and data-set box plots of tabular relevance."""
import io
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from torch import nn

import lrp.plot as lplot
from lrp import Explanation, explain
from lrp.composites import EpsilonPlus
from lrp.plot import NEGATIVE, POSITIVE, plot, plot_global

plt.switch_backend("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def bar_values(ax, horizontal=True):
    return np.array([p.get_width() if horizontal else p.get_height() for p in ax.patches])


def tick_names(ax, horizontal=True):
    labels = ax.get_yticklabels() if horizontal else ax.get_xticklabels()
    return [t.get_text() for t in labels]


def by_gid(ax, gid):
    return [a for a in list(ax.lines) + list(ax.patches) if a.get_gid() == gid]


@pytest.fixture
def tabular():
    rng = np.random.default_rng(0)
    relevance = rng.standard_t(3, size=(80, 7))
    relevance[:, 2] *= 4  # one clearly dominant feature
    relevance[:, 5] += 1.0  # one clearly positive feature
    return relevance, [f"f{i}" for i in range(7)]


@pytest.fixture
def mlp_explanation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(12, 5)
    return model, x


# ------------------------------------------------------------------ plot
@pytest.mark.parametrize("order", ["abs", "value", "feature"])
@pytest.mark.parametrize("orientation", ["horizontal", "vertical"])
def test_bars_are_the_relevance_in_the_requested_order(tabular, order, orientation):
    relevance, names = tabular
    row = relevance[4]
    key = {"abs": lambda i: -abs(row[i]), "value": lambda i: -row[i], "feature": lambda i: i}
    expected = sorted(range(len(row)), key=key[order])
    horizontal = orientation == "horizontal"
    ax = plot(relevance, names, sample=4, order=order, orientation=orientation)
    np.testing.assert_array_equal(bar_values(ax, horizontal), row[expected])
    assert tick_names(ax, horizontal) == [names[i] for i in expected]
    # the first feature is drawn at the top (horizontal) or on the left (vertical)
    centers = [p.get_y() + p.get_height() / 2 if horizontal else p.get_x() + p.get_width() / 2
               for p in ax.patches]
    first_at_top = ax.get_ylim()[0] > ax.get_ylim()[1] if horizontal else True
    assert np.all(np.diff(centers) > 0) and first_at_top


def test_bar_colors_follow_the_sign():
    row = np.array([0.5, -0.25, 0.0, 2.0, -3.0])
    ax = plot(row, order="feature")
    colors = [p.get_facecolor() for p in ax.patches]
    expected = [POSITIVE if v > 0 else NEGATIVE if v < 0 else "0.6" for v in row]
    assert colors == [to_rgba(c) for c in expected]


def test_top_keeps_the_largest_magnitudes(tabular):
    relevance, names = tabular
    row = relevance[7]
    largest = sorted(range(len(row)), key=lambda i: -abs(row[i]))[:3]
    ax = plot(relevance, names, sample=7, top=3, order="feature")
    assert tick_names(ax) == [names[i] for i in sorted(largest)]
    np.testing.assert_array_equal(bar_values(ax), row[sorted(largest)])
    assert "top 3 of 7" in ax.get_title()
    assert len(plot(relevance, names, sample=7, top=50).patches) == len(row)


def test_one_dimensional_and_single_channel_inputs():
    rng = np.random.default_rng(1)
    signal = rng.normal(size=(3, 1, 40))  # (batch, channels=1, length): a 1-D conv input
    ax = plot(torch.from_numpy(signal), sample=2, order="feature", orientation="vertical")
    np.testing.assert_array_equal(bar_values(ax, horizontal=False), signal[2, 0])
    assert ax.get_xlabel() == "feature index"
    ax = plot(signal[0, 0], order="feature")  # one sample as a 1-D array
    np.testing.assert_array_equal(bar_values(ax), signal[0, 0])
    ax = plot_global(torch.from_numpy(signal), order="feature", orientation="vertical")
    medians = [m.get_xydata()[0, 1] for m in by_gid(ax, "median")]
    np.testing.assert_allclose(medians, np.median(signal[:, 0], axis=0))


def test_plot_of_an_explanation_shows_the_sample_and_class(mlp_explanation):
    model, x = mlp_explanation
    explanation = explain(model, x, EpsilonPlus())
    for sample in (0, 5, -1):
        ax = plot(explanation, sample=sample, order="feature",
                  class_names=["cat", "dog", "bird"])
        np.testing.assert_allclose(bar_values(ax), explanation.relevance[sample].numpy())
        predicted = int(explanation.output[sample].argmax())
        assert f"class {['cat', 'dog', 'bird'][predicted]}" in ax.get_title()
        assert "EpsilonPlus" in ax.get_title()
    predicted = int(explanation.target[0])
    plot(explanation, sample=0, target=predicted)  # the explained class is fine
    with pytest.raises(ValueError, match="not for class"):
        plot(explanation, sample=0, target=(predicted + 1) % 3)


def test_plot_picks_the_class_of_a_multi_target_explanation(mlp_explanation):
    model, x = mlp_explanation
    targets = torch.tensor([[2, 0]] * len(x))
    explanation = explain(model, x, EpsilonPlus(), target=targets)
    for column, cls in enumerate((2, 0)):
        single = explain(model, x, EpsilonPlus(), target=cls)
        ax = plot(explanation, sample=3, target=cls, order="feature")
        np.testing.assert_allclose(bar_values(ax), explanation.relevance[3, column].numpy())
        np.testing.assert_allclose(bar_values(ax), single.relevance[3].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="choose one with target="):
        plot(explanation, sample=3)
    with pytest.raises(ValueError, match="not for class 1"):
        plot(explanation, sample=3, target=1)


def test_plot_draws_on_a_given_axes_and_renders_with_agg(tabular):
    relevance, names = tabular
    fig, axes = plt.subplots(1, 2)
    assert plot(relevance, names, ax=axes[0]) is axes[0]
    assert plot_global(relevance, names, ax=axes[1]) is axes[1]
    assert len(axes[0].patches) == relevance.shape[1]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend().lower() == "agg"


# ------------------------------------------------------------------ plot_global
@pytest.mark.parametrize("orientation", ["horizontal", "vertical"])
def test_box_statistics_equal_numpy(tabular, orientation):
    relevance, names = tabular
    horizontal = orientation == "horizontal"
    ax = plot_global(relevance, names, orientation=orientation, order="feature")
    value = 0 if horizontal else 1  # the data axis of the lines and box paths
    boxes, medians = by_gid(ax, "box"), by_gid(ax, "median")
    whiskers, fliers = by_gid(ax, "whisker"), by_gid(ax, "flier")
    assert len(boxes) == len(medians) == relevance.shape[1] == len(whiskers) // 2
    assert tick_names(ax, horizontal) == names
    for j in range(relevance.shape[1]):
        column = relevance[:, j]
        q1, median, q3 = np.percentile(column, [25, 50, 75])
        iqr = q3 - q1
        low = column[column >= q1 - 1.5 * iqr].min()
        high = column[column <= q3 + 1.5 * iqr].max()
        outside = np.sort(column[(column < low) | (column > high)])
        box = boxes[j].get_path().vertices[:, value]
        np.testing.assert_allclose([box.min(), box.max()], [q1, q3])
        line = medians[j].get_xydata()[:, value]
        np.testing.assert_allclose(line, [median, median])
        ends = sorted(sorted(w.get_xydata()[:, value]) for w in whiskers[2 * j:2 * j + 2])
        np.testing.assert_allclose(ends, [[low, q1], [q3, high]])
        np.testing.assert_allclose(np.sort(fliers[j].get_xydata()[:, value]), outside)


def test_global_order_and_top_by_mean_absolute_relevance(tabular):
    relevance, names = tabular
    mean_abs, mean = np.abs(relevance).mean(0), relevance.mean(0)
    by_abs = sorted(range(7), key=lambda j: -mean_abs[j])
    ax = plot_global(relevance, names)
    assert tick_names(ax) == [names[j] for j in by_abs]
    medians = [m.get_xydata()[0, 0] for m in by_gid(ax, "median")]
    np.testing.assert_allclose(medians, np.median(relevance[:, by_abs], axis=0))
    by_value = sorted(range(7), key=lambda j: -mean[j])
    assert tick_names(plot_global(relevance, names, order="value")) == [names[j] for j in by_value]
    ax = plot_global(relevance, names, top=2, order="feature")
    assert tick_names(ax) == [names[j] for j in sorted(by_abs[:2])]
    colors = [b.get_facecolor()[:3] for b in by_gid(ax, "box")]
    expected = [to_rgba(POSITIVE if mean[j] > 0 else NEGATIVE)[:3] for j in sorted(by_abs[:2])]
    assert colors == expected


def test_global_of_an_explanation_selects_the_target(mlp_explanation):
    model, x = mlp_explanation
    explanation = explain(model, x, EpsilonPlus())  # predicted classes: mixed
    classes = explanation.target.numpy()
    assert len(np.unique(classes)) > 1, "the fixture should predict several classes"
    with pytest.warns(UserWarning, match="pass target="):
        plot_global(explanation)
    cls = int(classes[0])
    ax = plot_global(explanation, target=cls, order="feature")
    rows = explanation.relevance.numpy()[classes == cls]
    medians = [m.get_xydata()[0, 0] for m in by_gid(ax, "median")]
    np.testing.assert_allclose(medians, np.median(rows, axis=0), rtol=1e-6)
    assert f"{len(rows)} samples" in ax.get_title()
    with pytest.raises(ValueError, match="no sample was explained for class 3"):
        plot_global(explanation, target=3)
    one_column = explain(model, x, EpsilonPlus(), target=explanation.target[:, None])
    with pytest.warns(UserWarning, match="pass target="):
        plot_global(one_column)
    ax = plot_global(one_column, target=cls, order="feature")
    medians = [m.get_xydata()[0, 0] for m in by_gid(ax, "median")]
    np.testing.assert_allclose(medians, np.median(rows, axis=0), rtol=1e-6)

    multi = explain(model, x, EpsilonPlus(), target=torch.tensor([[1, 2]] * len(x)))
    ax = plot_global(multi, target=2, order="feature")
    medians = [m.get_xydata()[0, 0] for m in by_gid(ax, "median")]
    np.testing.assert_allclose(medians, np.median(multi.relevance[:, 1].numpy(), axis=0))
    with pytest.raises(ValueError, match="choose one with target="):
        plot_global(multi)
    with pytest.raises(ValueError, match="no sample was explained for class 0"):
        plot_global(multi, target=0)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("function", [plot, plot_global])
def test_volume_shaped_relevance_points_to_lrp_image(function):
    with pytest.raises(ValueError, match=r"lrp\.image"):
        function(np.zeros((2, 1, 4, 8, 8)))
    with pytest.raises(ValueError, match="several channels"):
        function(np.zeros((2, 3, 10)))


def test_bad_arguments_are_reported(tabular):
    relevance, names = tabular
    with pytest.raises(ValueError, match="7 features"):
        plot(relevance, names[:3])
    with pytest.raises(ValueError, match="7 features"):
        plot_global(relevance, names + ["extra"])
    with pytest.raises(ValueError, match="sample"):
        plot(relevance, sample=len(relevance))
    with pytest.raises(ValueError, match="unknown order"):
        plot(relevance, order="size")
    with pytest.raises(ValueError, match="top"):
        plot_global(relevance, top=0)
    with pytest.raises(ValueError, match="orientation"):
        plot(relevance, orientation="diagonal")
    with pytest.raises(ValueError, match="samples, features"):
        plot_global(relevance[0])
    with pytest.raises(ValueError, match="NaN"):
        plot(np.array([1.0, np.nan]))


# ------------------------------------------------------------------ matplotlib is optional
def test_missing_matplotlib_says_how_to_install(monkeypatch, tabular):
    relevance, _ = tabular
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    for function in (plot, plot_global):
        with pytest.raises(ImportError, match=r"pip install 'lrp\[plot\]'"):
            function(relevance)


def test_importing_lrp_plot_does_not_import_matplotlib():
    code = ("import sys, lrp, lrp.plot, lrp.lime, lrp.kernel_shap, lrp.features, lrp.frames\n"
            "for name in ('matplotlib', 'plotly', 'pandas', 'skimage'):\n"
            "    assert name not in sys.modules, name + ' imported eagerly'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(lplot.__file__).parents[1])


# ------------------------------------------------------------------ names, plotly, images
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_names_of_an_explanation_label_the_plots(mlp_explanation):
    model, x = mlp_explanation
    names = ["price", "weight", "height", "width", "depth"]
    explanation = explain(model, x, EpsilonPlus()).named(names, ["cat", "dog", "bird"])
    ax = plot(explanation, sample=1, order="feature")
    assert tick_names(ax) == names
    assert f"class {['cat', 'dog', 'bird'][int(explanation.target[1])]}" in ax.get_title()
    predicted = int(explanation.target[0])
    ax = plot_global(explanation, target=predicted, order="feature")
    assert tick_names(ax) == names
    assert f"class {['cat', 'dog', 'bird'][predicted]}" in ax.get_title()


def test_plotly_bars_hover_feature_value_and_class(mlp_explanation):
    model, x = mlp_explanation
    names = ["price", "weight", "height", "width", "depth"]
    explanation = explain(model, x, EpsilonPlus()).named(names, ["cat", "dog", "bird"])
    figure = plot(explanation, sample=2, order="value", backend="plotly")
    (bars,) = figure.data
    row = explanation.relevance[2].numpy()
    order = np.argsort(-row, kind="stable")
    np.testing.assert_allclose(bars.x, row[order])
    label = f"class {['cat', 'dog', 'bird'][int(explanation.target[2])]}"
    assert [list(c) for c in bars.customdata] == [[names[i], label] for i in order]
    assert list(figure.layout.yaxis.ticktext) == [names[i] for i in order]
    for part in ("feature: %{customdata[0]}", "relevance: %{x", "%{customdata[1]}"):
        assert part in bars.hovertemplate
    assert label in figure.layout.title.text
    colors = [POSITIVE if v > 0 else NEGATIVE for v in row[order]]
    assert list(bars.marker.color) == colors


def test_plotly_boxes_are_the_feature_columns(tabular):
    relevance, names = tabular
    figure = plot_global(relevance, names, order="feature", backend="plotly",
                         orientation="vertical")
    assert [trace.type for trace in figure.data] == ["box"] * 7
    for i, trace in enumerate(figure.data):
        np.testing.assert_allclose(trace.y, relevance[:, i])
        assert trace.name == names[i] and trace.customdata[0][0] == names[i]
        assert "feature: %{customdata[0]}" in trace.hovertemplate


def test_plot_global_of_images_is_the_mean_map_of_each_class():
    rng = np.random.default_rng(0)
    relevance = torch.from_numpy(rng.normal(size=(9, 2, 6, 5)))
    target = torch.tensor([3, 1, 3, 3, 1, 7, 1, 3, 7])
    explanation = Explanation(relevance, torch.zeros(9, 10), target, "Test").named(
        output_names=CLASSES)
    expected = {c: relevance[target == c].sum(1).mean(0).numpy() for c in (1, 3, 7)}
    axes = plot_global(explanation)
    assert len(axes) == 3
    for ax, c in zip(axes, (1, 3, 7)):
        np.testing.assert_allclose(ax.images[0].get_array(), expected[c])
        assert ax.get_title() == f"class {CLASSES[c]} ({int((target == c).sum())} samples)"
    scale = max(abs(m).max() for m in expected.values())
    assert axes[0].images[0].get_clim() == (-scale, scale)  # one symmetric scale for all
    bars = [a for a in axes[0].figure.axes if a.get_ylabel() == "relevance"]
    assert len(bars) == 1  # one colour bar
    ax = plot_global(explanation, target=7)
    np.testing.assert_allclose(ax.images[0].get_array(), expected[7])
    assert "class seven (2 samples)" in ax.get_title()

    figure = plot_global(explanation, backend="plotly")
    assert [t.type for t in figure.data] == ["heatmap"] * 3
    for trace, c in zip(figure.data, (1, 3, 7)):
        np.testing.assert_allclose(np.asarray(trace.z, dtype=float), expected[c])
        assert trace.customdata[0][0] == f"class {CLASSES[c]}"
        assert "relevance: %{z" in trace.hovertemplate and "row %{y}" in trace.hovertemplate
    titles = [a.text for a in figure.layout.annotations]
    assert titles == [f"class {CLASSES[c]} ({int((target == c).sum())} samples)"
                      for c in (1, 3, 7)]
    assert figure.layout.coloraxis.cmin == -scale and figure.layout.coloraxis.cmax == scale


def test_plot_of_an_image_sample_is_its_channel_sum():
    rng = np.random.default_rng(1)
    relevance = rng.normal(size=(2, 3, 6, 5))
    ax = plot(relevance, sample=1, title="mine")
    np.testing.assert_allclose(ax.images[0].get_array(), relevance[1].sum(0))
    assert ax.get_title() == "mine"
    figure = plot(relevance, sample=1, backend="plotly")
    np.testing.assert_allclose(np.asarray(figure.data[0].z, dtype=float), relevance[1].sum(0))


def test_backend_errors_and_missing_plotly(monkeypatch, tabular):
    relevance, _ = tabular
    with pytest.raises(ValueError, match="backend"):
        plot(relevance, backend="bokeh")
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="ax= is for the matplotlib backend"):
        plot_global(relevance, ax=ax, backend="plotly")
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    for function in (plot, plot_global):
        with pytest.raises(ImportError, match=r"pip install 'lrp\[interactive\]'"):
            function(relevance, backend="plotly")
