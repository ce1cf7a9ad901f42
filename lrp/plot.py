"""Plots of relevance: bars and box plots for tabular and 1-D inputs, heatmaps for
images; static (matplotlib) or interactive (plotly).

* :func:`plot` -- one sample: the relevance of every feature as bars (red:
  positive, blue: negative, as in the heatmaps of :mod:`lrp.image`), or the
  heatmap of an image;
* :func:`plot_global` -- a data set: the distribution of each feature's relevance
  as one box plot per feature, or for images the mean relevance map of each
  explained class (innsight's image ``plot_global``).

Both take an :class:`lrp.Explanation` or a relevance array (numpy or torch).  With
``backend="matplotlib"`` (default) they return the matplotlib ``Axes`` they drew on
(``ax.figure`` is the figure; an array of ``Axes`` for several image panels); with
``backend="plotly"`` an interactive ``plotly.graph_objects.Figure`` whose hover
text shows the feature (or pixel), the value and the class (innsight's
``as_plotly``)::

    from lrp import explain
    from lrp.composites import EpsilonPlus
    from lrp.plot import plot, plot_global

    explanation = explain(model, x, EpsilonPlus(), target=1).named(names, classes)
    plot(explanation, sample=0, top=10).figure.savefig("sample0.png")
    plot_global(explanation, backend="plotly").write_html("global.html")

Feature and class names default to the explanation's ``input_names`` and
``output_names`` (:meth:`lrp.Explanation.named`).  matplotlib and plotly are
imported only when a plot is drawn; without them, an ``ImportError`` says how to
install them (``pip install 'lrp[plot]'``, ``pip install 'lrp[interactive]'``).
"""
from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .image import _as_float, _to_numpy, reduce_channels

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from .explanation import Explanation

__all__ = ["BACKENDS", "NEGATIVE", "POSITIVE", "plot", "plot_global"]

#: Plotting libraries: static matplotlib figures or interactive plotly figures.
BACKENDS = ("matplotlib", "plotly")

#: Color of positive relevance (red, as in the ``bwr`` heatmaps).
POSITIVE = "#d62728"
#: Color of negative relevance (blue).
NEGATIVE = "#1f77b4"

_ORDERS = ("abs", "value", "feature")
_ORIENTATIONS = ("horizontal", "vertical")
_GIDS = {"boxes": "box", "medians": "median", "whiskers": "whisker", "caps": "cap",
         "fliers": "flier", "means": "mean"}

RelevanceLike = Union["Explanation", Any]


def _pyplot():
    """Import ``matplotlib.pyplot`` or explain how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("lrp.plot needs matplotlib, which is not installed; install it with "
                          "pip install 'lrp[plot]' (or pip install matplotlib)") from err
    return plt


def _plotly():
    """Import ``plotly.graph_objects`` or explain how to install it."""
    try:
        import plotly.graph_objects as go
    except ImportError as err:
        raise ImportError("interactive plots need plotly, which is not installed; install it "
                          "with pip install 'lrp[interactive]' (or pip install plotly)") from err
    return go


def _check_backend(backend: str, ax) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "plotly" and ax is not None:
        raise ValueError("ax= is for the matplotlib backend; plotly figures are made new")


# --------------------------------------------------------------------------- inputs
def _given_names(relevance: RelevanceLike) -> tuple[tuple | None, tuple | None]:
    """The explanation's ``input_names`` and ``output_names`` (``None`` for arrays)."""
    return getattr(relevance, "input_names", None), getattr(relevance, "output_names", None)


def _feature_names_of(input_names: tuple | None) -> tuple | None:
    """Feature names from an explanation's input names: those of the only dimension
    of ``(features,)`` samples, or of the second of ``(1, length)`` samples."""
    return None if input_names is None else input_names[-1]


def _parts(relevance: RelevanceLike) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Relevance as float64, the explained classes (``None`` for arrays), method name."""
    if hasattr(relevance, "relevance") and hasattr(relevance, "target"):
        r = _as_float(relevance.relevance)
        t = None if relevance.target is None else _to_numpy(relevance.target).astype(np.int64)
        return r, t, str(getattr(relevance, "method", "") or "")
    return _as_float(relevance), None, ""


def _one_per_feature(r: np.ndarray, where: str) -> np.ndarray:
    """``r`` (one sample's relevance) as a 1-D vector: one value per feature."""
    if r.ndim == 2 and r.shape[0] == 1:
        r = r[0]
    if r.ndim == 1:
        return r
    if r.ndim == 2:
        raise ValueError(
            f"{where} has shape {r.shape}: several channels (or targets) per feature. "
            "These plots show one value per feature: select one (e.g. relevance[:, 0]) or sum "
            "the channels (relevance.sum(1)) first; for images use lrp.image")
    raise ValueError(
        f"{where} has shape {r.shape}, an image or volume; lrp.plot is for tabular and 1-D "
        "inputs. Use lrp.image.heatmap, lrp.image.overlay or lrp.image.grid for images")


def _names(feature_names: Sequence[Any] | None, n: int) -> list:
    if feature_names is None:
        return [f"feature {i}" for i in range(n)]
    names = [str(name) for name in feature_names]
    if len(names) != n:
        raise ValueError(f"got {len(names)} feature names for {n} features")
    return names


def _class_label(cls: int | None, class_names: Sequence[Any] | None) -> str:
    if cls is None:
        return ""
    if class_names is not None and 0 <= cls < len(class_names):
        return f"class {class_names[cls]}"
    return f"class {cls}"


def _order(magnitude: np.ndarray, values: np.ndarray, order: str,
           top: int | None) -> np.ndarray:
    """Feature indices to show: the ``top`` largest ``magnitude``, arranged by ``order``
    (``"abs"``: by ``magnitude``, ``"value"``: by ``values``, both descending)."""
    if order not in _ORDERS:
        raise ValueError(f"unknown order {order!r}; expected one of {', '.join(_ORDERS)}")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
            raise ValueError(f"top must be a positive int, got {top!r}")
        chosen = np.argsort(-magnitude, kind="stable")[:top]
    else:
        chosen = np.arange(len(values))
    if order == "abs":
        return chosen[np.argsort(-magnitude[chosen], kind="stable")]
    if order == "value":
        return chosen[np.argsort(-values[chosen], kind="stable")]
    return np.sort(chosen)


def _check_orientation(orientation: str) -> bool:
    if orientation not in _ORIENTATIONS:
        raise ValueError(f"orientation must be 'horizontal' or 'vertical', got {orientation!r}")
    return orientation == "horizontal"


def _axes(ax: Axes | None, names: list, horizontal: bool) -> Axes:
    """``ax``, or the axes of a new figure sized for ``names`` (the shown features)."""
    plt = _pyplot()
    if ax is not None:
        return ax
    n, longest = len(names), max((len(name) for name in names), default=0)
    if horizontal:  # room for the names on the left, one row per feature
        size = (min(14.0, max(6.4, 3.5 + 0.08 * longest)), max(2.4, 0.3 * n + 1.3))
    else:
        size = (max(4.0, 0.3 * n + 1.5), 4.0 + min(4.0, 0.08 * longest))
    _, ax = plt.subplots(figsize=size, layout="constrained")
    return ax


def _feature_axis(ax: Axes, names: list, horizontal: bool, numeric: bool) -> None:
    """Label the feature axis; the first feature is at the top (left when vertical)."""
    n = len(names)
    positions = np.arange(n)
    if horizontal:
        ax.set_yticks(positions)
        ax.set_yticklabels(names)
        ax.set_ylim(n - 0.5, -0.5)
        ax.axvline(0.0, color="0.3", linewidth=0.8, zorder=0)
        ax.set_xlabel("relevance")
    else:
        if numeric:
            ax.set_xlabel("feature index")
        else:
            ax.set_xticks(positions)
            ax.set_xticklabels(names, rotation=90)
        ax.set_xlim(-0.5, n - 0.5)
        ax.axhline(0.0, color="0.3", linewidth=0.8, zorder=0)
        ax.set_ylabel("relevance")


# --------------------------------------------------------------------------- plots
def plot(relevance: RelevanceLike, feature_names: Sequence[Any] | None = None, *,
         sample: int = 0, target: int | None = None, top: int | None = None,
         order: str = "abs", orientation: str = "horizontal",
         class_names: Sequence[Any] | None = None,
         colors: tuple[str, str] = (POSITIVE, NEGATIVE), title: str | None = None,
         ax: Axes | None = None, backend: str = "matplotlib"):
    """Bar plot of the relevance of every feature for one sample (the heatmap of an
    image sample).

    Parameters
    ----------
    relevance
        An :class:`lrp.Explanation` of tabular or 1-D inputs (relevance
        ``(batch, features)``, ``(batch, 1, length)``, or ``(batch, k, ...)`` when
        ``k`` classes were explained per sample), or a relevance array / tensor
        ``(features,)`` (one sample), ``(n, features)`` or ``(n, 1, length)``.
        Image relevance (``(batch, C, H, W)``) is drawn as a heatmap of the channel
        sum, red positive and blue negative on one symmetric scale, with a colour
        bar; the bar options (``feature_names``, ``top``, ``order``,
        ``orientation``, ``colors``) do not apply.
    feature_names
        One name per feature; default: the explanation's ``input_names``, else
        ``"feature 0"``, ``"feature 1"``, ...
    sample
        The sample (row) to show.
    target
        The class to show.  For an explanation of several classes per sample,
        one of that sample's explained classes (default: the first); for an
        explanation of one class per sample, it must be the explained class
        (default: that class).  For arrays, which carry no classes, it only
        labels the title.
    top
        Show only the ``top`` features with the largest ``|relevance|``.
    order
        ``"abs"`` (default): largest ``|relevance|`` first.  ``"value"``: from the
        most positive to the most negative.  ``"feature"``: in input order.
    orientation
        ``"horizontal"`` (default): one bar per row, the first at the top, names
        on the left.  ``"vertical"``: one bar per column, the first on the left;
        with ``order="feature"`` and no names, the x-axis is the feature index
        (for 1-D signals).
    class_names
        Names of the model's classes, for the title and hover text; default: the
        explanation's ``output_names``.
    colors
        Colors of positive and of negative bars (zero is gray).
    title
        The axes title; default: the method, sample and class.
    ax
        The matplotlib ``Axes`` to draw on; default: a new figure.
    backend
        ``"matplotlib"`` (default) or ``"plotly"`` (an interactive figure; hovering
        a bar shows the feature, its relevance and the class).

    Returns
    -------
    matplotlib.axes.Axes or plotly.graph_objects.Figure
        matplotlib: the axes; the bars are ``ax.patches`` in display order, and
        their lengths are the relevance values.  plotly: the figure, with one
        ``Bar`` (or ``Heatmap``) trace.

    Raises
    ------
    ImportError
        If the backend's library is not installed.
    ValueError
        For multi-channel 1-D relevance, a sample or class that is not in the
        explanation, a wrong number of names, or a bad option.
    """
    horizontal = _check_orientation(orientation)
    _check_backend(backend, ax)
    r, t, method = _parts(relevance)
    input_names, output_names = _given_names(relevance)
    if class_names is None:
        class_names = output_names
    if r.ndim == 0:
        raise ValueError("relevance must have one value per feature, got a scalar")
    rows = r[None] if t is None and r.ndim == 1 else r
    n = rows.shape[0]
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) \
            or not -n <= sample < n:
        raise ValueError(f"sample must be an int index into {n} samples, got {sample!r}")
    row = rows[sample]
    cls = target
    if t is not None:
        classes = np.atleast_1d(t[sample])
        if target is None:
            if t.ndim == 2 and len(classes) > 1:
                raise ValueError(f"sample {sample} was explained for classes {classes.tolist()}; "
                                 "choose one with target=")
            column = 0
        elif (classes == target).any():
            column = int(np.argmax(classes == target))
        else:
            raise ValueError(f"sample {sample} was explained for class(es) {classes.tolist()}, "
                             f"not for class {target}")
        if t.ndim == 2:
            row = row[column]
        cls = int(classes[column])
    auto_title = title is None
    if title is None:
        parts = [method, f"sample {sample}", _class_label(cls, class_names)]
        title = ", ".join(p for p in parts if p)
    if row.ndim == 3:
        return _image_panels([reduce_channels(row)], [""], [_class_label(cls, class_names)],
                             title, input_names, backend, ax)
    values = _one_per_feature(row, "the relevance of one sample")
    if feature_names is None:
        feature_names = _feature_names_of(input_names)
    names = _names(feature_names, len(values))
    index = _order(np.abs(values), values, order, top)
    shown = values[index]
    shown_names = [names[i] for i in index]
    if auto_title and top is not None and top < len(values):
        title += f" (top {top} of {len(values)} features)"
    positive, negative = colors
    if backend == "plotly":
        return _plotly_bars(shown, shown_names, _class_label(cls, class_names), colors,
                            horizontal, title)
    ax = _axes(ax, shown_names, horizontal)
    bar_colors = [positive if v > 0 else negative if v < 0 else "0.6" for v in shown]
    positions = np.arange(len(index))
    if horizontal:
        ax.barh(positions, shown, height=0.7, color=bar_colors)
    else:
        ax.bar(positions, shown, width=0.8 if len(index) < 60 else 1.0, color=bar_colors)
    _feature_axis(ax, shown_names, horizontal,
                  numeric=feature_names is None and order == "feature")
    ax.set_title(title)
    return ax


def _global_rows(relevance: RelevanceLike, target: int | None
                 ) -> tuple[np.ndarray, int | None, str]:
    """The ``(n, features)`` relevance of the samples explained for ``target``."""
    r, t, method = _parts(relevance)
    cls = target
    if t is not None and t.ndim == 2 and t.shape[1] == 1:  # one class per sample after all
        r, t = r[:, 0], t[:, 0]
    if t is not None:
        if t.ndim == 2:
            if target is None:
                raise ValueError(f"the explanation has {t.shape[1]} classes per sample; "
                                 "choose one with target=")
            hit = t == target
            keep = hit.any(axis=1)
            if not keep.any():
                raise ValueError(f"no sample was explained for class {target}")
            r = r[np.flatnonzero(keep), hit[keep].argmax(axis=1)]
        else:
            if target is not None:
                keep = t == target
                if not keep.any():
                    raise ValueError(f"no sample was explained for class {target}; explained "
                                     f"classes: {np.unique(t).tolist()}")
                r = r[keep]
            elif len(np.unique(t)) > 1:
                warnings.warn(f"the explanation mixes the relevance of classes "
                              f"{np.unique(t).tolist()}; pass target= to show one class",
                              stacklevel=3)
            elif t.size:
                cls = int(t[0])
    if r.ndim < 2:
        raise ValueError(f"plot_global needs relevance of shape (samples, features), got {r.shape}")
    if r.ndim >= 3:
        if r.shape[0] == 0:
            raise ValueError("plot_global needs at least one sample")
        _one_per_feature(r[0], "the relevance of one sample")  # raises unless (1, F)
        r = r[:, 0]
    if r.shape[0] == 0:
        raise ValueError("plot_global needs at least one sample")
    return r, cls, method


def plot_global(relevance: RelevanceLike, feature_names: Sequence[Any] | None = None, *,
                target: int | None = None, top: int | None = None, order: str = "abs",
                orientation: str = "horizontal", class_names: Sequence[Any] | None = None,
                show_fliers: bool = True, show_means: bool = False,
                colors: tuple[str, str] = (POSITIVE, NEGATIVE), title: str | None = None,
                ax: Axes | None = None, backend: str = "matplotlib"):
    """Box plots of each feature's relevance over a data set; for images, the mean
    relevance map of each class.

    Each box spans the quartiles of one feature's relevance over the samples, with
    the median as a line and whiskers to the furthest values within 1.5 times the
    interquartile range; points beyond are drawn as fliers.  A box is red when the
    feature's mean relevance is positive and blue when it is negative.

    For image relevance (``(samples, C, H, W)``, or ``(samples, k, C, H, W)`` with
    ``k`` classes per sample) it draws one heatmap per explained class: the mean
    over the samples (and target columns) explained for that class, summed over
    channels, all panels on one symmetric colour scale with one colour bar, each
    titled with the class and its number of samples (innsight's ``plot_global``
    for images).  ``target`` keeps one class; arrays (no classes) give one panel.
    The box options (``feature_names``, ``top``, ``order``, ``orientation``,
    ``show_fliers``, ``show_means``, ``colors``) do not apply.

    Parameters
    ----------
    relevance
        An :class:`lrp.Explanation` or a relevance array / tensor
        ``(samples, features)`` (or ``(samples, 1, length)``), or image relevance.
    feature_names
        One name per feature; default: the explanation's ``input_names``, else
        ``"feature 0"``, ``"feature 1"``, ...
    target
        For an explanation: use only the samples explained for this class (the
        column of this class when several were explained per sample).  Without
        it, an explanation of different classes warns, since their relevances
        mean different things.  For arrays it only labels the title.
    top
        Show only the ``top`` features with the largest mean ``|relevance|``.
    order
        ``"abs"`` (default): largest mean ``|relevance|`` first.  ``"value"``: by
        mean relevance, most positive first.  ``"feature"``: in input order.
    orientation
        ``"horizontal"`` (default, first feature at the top) or ``"vertical"``.
    class_names
        Names of the model's classes, for the titles and hover text; default: the
        explanation's ``output_names``.
    show_fliers, show_means
        Draw the outliers beyond the whiskers; mark the mean of each feature.
    colors
        Colors of boxes with positive and with negative mean relevance.
    title
        The axes title; default: the method, number of samples and class.
    ax
        The matplotlib ``Axes`` to draw on (one image panel only); default: a new
        figure.
    backend
        ``"matplotlib"`` (default) or ``"plotly"`` (an interactive figure; hovering
        shows the feature or pixel, the value and the class).

    Returns
    -------
    matplotlib.axes.Axes, numpy.ndarray of Axes, or plotly.graph_objects.Figure
        matplotlib: the axes (an array of axes, one per class, for several image
        panels).  The box-plot artists carry the gids ``"box"``, ``"median"``,
        ``"whisker"``, ``"cap"``, ``"flier"`` and ``"mean"``, in display order.
        plotly: the figure, with one ``Box`` trace per feature (one ``Heatmap``
        per class for images).

    Raises
    ------
    ImportError
        If the backend's library is not installed.
    ValueError
        For multi-channel 1-D relevance, no sample of ``target``, a wrong number
        of names, or a bad option.
    """
    horizontal = _check_orientation(orientation)
    _check_backend(backend, ax)
    input_names, output_names = _given_names(relevance)
    if class_names is None:
        class_names = output_names
    if _is_image_batch(relevance):
        maps, labels, hover, count, method = _class_means(relevance, target, class_names)
        if title is None:
            title = ", ".join(p for p in [method, f"mean relevance of {count} samples"] if p)
        return _image_panels(maps, labels, hover, title, input_names, backend, ax)
    data, cls, method = _global_rows(relevance, target)
    if feature_names is None:
        feature_names = _feature_names_of(input_names)
    names = _names(feature_names, data.shape[1])
    index = _order(np.abs(data).mean(axis=0), data.mean(axis=0), order, top)
    means = data[:, index].mean(axis=0)
    shown_names = [names[i] for i in index]
    if title is None:
        parts = [method, f"{data.shape[0]} samples", _class_label(cls, class_names)]
        title = ", ".join(p for p in parts if p)
        if top is not None and top < data.shape[1]:
            title += f" (top {top} of {data.shape[1]} features)"
    if backend == "plotly":
        return _plotly_boxes(data[:, index], shown_names, _class_label(cls, class_names),
                             colors, horizontal, title, show_fliers, show_means)
    ax = _axes(ax, shown_names, horizontal)
    positions = np.arange(len(index))
    kwargs: dict = {"positions": positions, "widths": 0.6, "patch_artist": True,
                        "showfliers": show_fliers, "showmeans": show_means,
                        "medianprops": {"color": "black", "linewidth": 1.5},
                        "flierprops": {"marker": ".", "markersize": 3, "alpha": 0.6},
                        "meanprops": {"marker": "D", "markersize": 4, "markerfacecolor": "white",
                                       "markeredgecolor": "black"}}
    if "orientation" in inspect.signature(ax.boxplot).parameters:  # matplotlib >= 3.10
        kwargs["orientation"] = "horizontal" if horizontal else "vertical"
    else:
        kwargs["vert"] = not horizontal
    artists = ax.boxplot([data[:, i] for i in index], **kwargs)
    positive, negative = colors
    for box, mean in zip(artists["boxes"], means):
        box.set_facecolor(positive if mean > 0 else negative if mean < 0 else "0.6")
        box.set_alpha(0.45)
    for key, gid in _GIDS.items():
        for artist in artists.get(key, []):
            artist.set_gid(gid)
    _feature_axis(ax, shown_names, horizontal, numeric=False)
    ax.set_title(title)
    return ax


# --------------------------------------------------------------------------- images
def _is_image_batch(relevance: RelevanceLike) -> bool:
    """Whether ``relevance`` holds images ``(samples, [k,] C, H, W)``."""
    r = relevance.relevance if hasattr(relevance, "relevance") else relevance
    t = getattr(relevance, "target", None)
    lead = 2 if t is not None and t.dim() == 2 else 1
    return len(getattr(r, "shape", np.shape(r))) - lead == 3


def _class_means(relevance: RelevanceLike, target: int | None,
                 class_names: Sequence[Any] | None
                 ) -> tuple[list, list[str], list[str], int, str]:
    """Per explained class: the mean map (channel sum), panel label, hover label; the
    number of samples shown and the method."""
    r, t, method = _parts(relevance)
    if t is None:
        if r.shape[0] == 0:
            raise ValueError("plot_global needs at least one sample")
        label = _class_label(target, class_names)
        return [reduce_channels(r.mean(axis=0))], [f"{label} ({r.shape[0]} samples)".strip()], \
            [label], r.shape[0], method
    maps = r.reshape((-1,) + r.shape[-3:])
    classes = t.reshape(-1)
    wanted = np.unique(classes) if target is None else np.array([target])
    if target is not None and not (classes == target).any():
        raise ValueError(f"no sample was explained for class {target}; explained classes: "
                         f"{np.unique(classes).tolist()}")
    if not len(wanted):
        raise ValueError("plot_global needs at least one sample")
    means, labels, hover = [], [], []
    for c in wanted.tolist():
        chosen = classes == c
        means.append(reduce_channels(maps[chosen].mean(axis=0)))
        hover.append(_class_label(c, class_names))
        labels.append(f"{hover[-1]} ({int(chosen.sum())} samples)")
    count = int(np.isin(classes, wanted).sum())
    return means, labels, hover, count, method


def _image_panels(maps: list, labels: list[str], hover: list[str], title: str,
                  input_names: tuple | None, backend: str, ax):
    """Heatmaps of ``(H, W)`` maps on one symmetric scale, red positive."""
    scale = max(float(np.abs(m).max()) for m in maps) or 1.0
    rows_names = input_names[1] if input_names is not None and len(input_names) == 3 else None
    cols_names = input_names[2] if input_names is not None and len(input_names) == 3 else None
    ncols = min(len(maps), 5)
    nrows = -(-len(maps) // ncols)
    if backend == "plotly":
        return _plotly_heatmaps(maps, labels, hover, title, scale, rows_names, cols_names,
                                nrows, ncols)
    plt = _pyplot()
    if ax is not None:
        if len(maps) > 1:
            raise ValueError(f"{len(maps)} panels do not fit one ax=; pass target= or no ax")
        axes = np.array([ax])
        figure = ax.figure
    else:
        figure, grid_axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                                         figsize=(2.6 * ncols + 1.2, 2.6 * nrows + 0.6))
        axes = grid_axes.ravel()
        for extra in axes[len(maps):]:
            extra.set_visible(False)
        axes = axes[:len(maps)]
    for panel, heat, label in zip(axes, maps, labels):
        image = panel.imshow(heat, cmap="bwr", vmin=-scale, vmax=scale, interpolation="nearest")
        panel.set_xticks([])
        panel.set_yticks([])
        panel.set_title(label, fontsize="medium")
    figure.colorbar(image, ax=list(axes), label="relevance", shrink=0.8)
    if len(maps) == 1:
        axes[0].set_title(title if not labels[0] else f"{title}\n{labels[0]}", fontsize="medium")
        return axes[0]
    figure.suptitle(title)
    return axes


# --------------------------------------------------------------------------- plotly
def _hover(what: str, value: str, cls: str) -> str:
    text = f"{what}<br>relevance: {value}"
    return text + ("<br>%{customdata[1]}" if cls else "") + "<extra></extra>"


def _plotly_bars(values: np.ndarray, names: list, cls: str, colors: tuple[str, str],
                 horizontal: bool, title: str):
    go = _plotly()
    positive, negative = colors
    positions = np.arange(len(values))
    bar_colors = [positive if v > 0 else negative if v < 0 else "#999999" for v in values]
    value_axis = "x" if horizontal else "y"
    figure = go.Figure(go.Bar(
        x=values if horizontal else positions, y=positions if horizontal else values,
        orientation="h" if horizontal else "v", marker_color=bar_colors,
        customdata=[[name, cls] for name in names],
        hovertemplate=_hover("feature: %{customdata[0]}", f"%{{{value_axis}:.4g}}", cls)))
    return _plotly_feature_axes(figure, names, horizontal, title, row_height=24)


def _plotly_boxes(data: np.ndarray, names: list, cls: str, colors: tuple[str, str],
                  horizontal: bool, title: str, show_fliers: bool, show_means: bool):
    go = _plotly()
    positive, negative = colors
    figure = go.Figure()
    value_axis = "x" if horizontal else "y"
    for position, (name, column) in enumerate(zip(names, data.T)):
        mean = column.mean()
        color = positive if mean > 0 else negative if mean < 0 else "#999999"
        where = np.full(len(column), position)
        figure.add_trace(go.Box(
            x=column if horizontal else where, y=where if horizontal else column,
            orientation="h" if horizontal else "v", name=name, marker_color=color,
            boxpoints="outliers" if show_fliers else False, boxmean=show_means,
            customdata=[[name, cls]] * len(column),
            hovertemplate=_hover("feature: %{customdata[0]}", f"%{{{value_axis}:.4g}}", cls)))
    return _plotly_feature_axes(figure, names, horizontal, title, row_height=28)


def _plotly_feature_axes(figure, names: list, horizontal: bool, title: str, row_height: int):
    """Feature names along one axis (top to bottom when horizontal), relevance along
    the other; a horizontal figure grows with the number of features."""
    ticks = {"tickmode": "array", "tickvals": list(range(len(names))), "ticktext": names}
    if horizontal:
        figure.update_yaxes(autorange="reversed", **ticks)
        figure.update_xaxes(title_text="relevance", zeroline=True)
    else:
        figure.update_xaxes(**ticks)
        figure.update_yaxes(title_text="relevance", zeroline=True)
    figure.update_layout(title_text=title, showlegend=False,
                         height=max(300, row_height * len(names) + 120) if horizontal else None)
    return figure


def _plotly_heatmaps(maps: list, labels: list[str], hover: list[str], title: str, scale: float,
                     row_names, col_names, nrows: int, ncols: int):
    go = _plotly()
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=nrows, cols=ncols, subplot_titles=labels,
                           horizontal_spacing=0.03, vertical_spacing=0.08)
    for i, (heat, cls) in enumerate(zip(maps, hover)):
        height, width = heat.shape
        ys = list(row_names) if row_names is not None else list(range(height))
        xs = list(col_names) if col_names is not None else list(range(width))
        figure.add_trace(go.Heatmap(
            z=heat, x=xs, y=ys, coloraxis="coloraxis",
            customdata=np.full(heat.shape, cls, dtype=object),
            hovertemplate="row %{y}, column %{x}<br>relevance: %{z:.4g}"
                          + ("<br>%{customdata}" if cls else "") + "<extra></extra>"),
            row=i // ncols + 1, col=i % ncols + 1)
    figure.update_yaxes(autorange="reversed", showticklabels=False)
    figure.update_xaxes(showticklabels=False, scaleanchor=None)
    figure.update_layout(
        title_text=title,
        coloraxis={"colorscale": [[0.0, "#0000ff"], [0.5, "#ffffff"], [1.0, "#ff0000"]],
                   "cmin": -scale, "cmax": scale, "colorbar": {"title": {"text": "relevance"}}},
        height=260 * nrows + 120, width=260 * ncols + 160)
    return figure

