"""Render relevance maps as images (numpy + Pillow only).

The pipeline from a relevance array to a picture is

1. :func:`reduce_channels` -- ``(C, H, W)`` relevance to one value per pixel,
2. :func:`normalize` -- values to ``[0, 1]`` (zero at ``0.5`` for diverging maps),
3. a :class:`Colormap` -- ``[0, 1]`` to RGB through a 256-entry lookup table,

and :func:`heatmap` does all three.  :func:`overlay` blends a heatmap over the
input image (opacity following ``|R|``), :func:`annotate` adds a label and a
:func:`colorbar` with the value scale (:func:`value_range`), :func:`grid` tiles many
maps (with labels) into one image and :func:`save` writes any of them to disk (PNG
unless the suffix says otherwise).

Relevance may be a numpy array, a nested sequence or a torch tensor (converted
with ``.detach().cpu().numpy()``; torch itself is never imported here).  Shapes
are channel-first like PyTorch: ``(H, W)``, ``(C, H, W)``, or batched
``(N, C, H, W)`` for :func:`grid`.

Colormaps are registered names (``bwr``, ``coldnhot``, ``seismic`` are diverging;
``gray``, ``hot``, ``magma``, ``viridis`` are sequential) or a spec string of
comma-separated ``position:hexcolor`` stops, e.g. ``"0:00f,0.5:fff,1:f00"``, or
plain colors for equally spaced stops, e.g. ``"00f,fff,f00"``::

    from lrp.image import heatmap, overlay, grid, save

    save(heatmap(relevance[0]), "heatmap.png")
    save(overlay(relevance[0], x[0], mean=MEAN, std=STD), "overlay.png")
    save(grid(relevance, labels=names, cmap="coldnhot"), "grid.png")
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "Colormap",
    "COLORMAPS",
    "colormap",
    "normalize",
    "reduce_channels",
    "heatmap",
    "overlay",
    "grid",
    "save",
    "value_range",
    "colorbar",
    "annotate",
]

#: Anything array-like: numpy array, nested sequence, or torch tensor.
ArrayLike = Any

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_MODES = ("symmetric", "absolute", "unaligned")
_REDUCTIONS = ("sum", "norm", "max-abs")
_HEX = re.compile(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")


# --------------------------------------------------------------------------- helpers
def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Convert a torch tensor (duck-typed via ``.detach``) or array-like to numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _as_float(x: ArrayLike) -> np.ndarray:
    """Float64 copy of ``x``; raises ``ValueError`` on NaN or infinite values."""
    arr = np.array(_to_numpy(x), dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("relevance contains NaN or infinite values")
    return arr


def _to_index(values: np.ndarray) -> np.ndarray:
    """Map ``[0, 1]`` to lookup-table indices ``0..255`` (``0.5`` -> 128)."""
    return np.clip(np.floor(np.asarray(values, dtype=np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- colormaps
@dataclass(frozen=True, eq=False)
class Colormap:
    """A colormap: a 256x3 ``uint8`` lookup table.

    Parameters
    ----------
    name
        Registered name or the spec string it was built from.
    lut
        ``(256, 3)`` ``uint8`` table; entry ``i`` is the color of value ``i / 255``.
    diverging
        Whether the map is centered at zero (then :func:`heatmap` normalizes with
        ``mode="symmetric"`` by default, otherwise ``"absolute"``).
    """

    name: str
    lut: np.ndarray
    diverging: bool = False

    def __post_init__(self) -> None:
        lut = np.array(self.lut, dtype=np.uint8)
        if lut.shape != (256, 3):
            raise ValueError(f"lut must have shape (256, 3), got {lut.shape}")
        lut.setflags(write=False)
        object.__setattr__(self, "lut", lut)

    def __call__(self, values: ArrayLike) -> np.ndarray:
        """Colors of ``values`` in ``[0, 1]`` (clipped).

        Parameters
        ----------
        values
            Array of any shape with values in ``[0, 1]``.

        Returns
        -------
        numpy.ndarray
            ``uint8`` array of shape ``values.shape + (3,)``.
        """
        return self.lut[_to_index(_to_numpy(values))]

    def __repr__(self) -> str:
        kind = "diverging" if self.diverging else "sequential"
        return f"Colormap({self.name!r}, {kind})"


def _parse_color(text: str, spec: str) -> Tuple[int, int, int]:
    match = _HEX.fullmatch(text)
    if match is None:
        raise ValueError(f"bad hex color {text!r} in colormap spec {spec!r} "
                         "(expected 3 or 6 hex digits, e.g. 'f00' or 'ff0000')")
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def _parse_spec(spec: str) -> np.ndarray:
    """Build the lookup table of a ``"pos:hex,pos:hex,..."`` or ``"hex,hex,..."`` spec."""
    tokens = [t.strip() for t in spec.split(",")]
    if len(tokens) < 2 or any(not t for t in tokens):
        raise ValueError(f"colormap spec {spec!r} needs at least two comma-separated "
                         "color stops, e.g. '0:00f,0.5:fff,1:f00' or '00f,fff,f00'")
    with_pos = [":" in t for t in tokens]
    if any(with_pos) and not all(with_pos):
        raise ValueError(f"colormap spec {spec!r} mixes stops with and without positions; "
                         "give a position for every stop or for none")
    if all(with_pos):
        positions, colors = [], []
        for token in tokens:
            pos_text, color_text = token.split(":", 1)
            try:
                pos = float(pos_text)
            except ValueError:
                raise ValueError(f"bad position {pos_text!r} in colormap spec {spec!r}") from None
            if not 0.0 <= pos <= 1.0:
                raise ValueError(f"position {pos_text!r} in colormap spec {spec!r} is outside [0, 1]")
            positions.append(pos)
            colors.append(_parse_color(color_text.strip(), spec))
        if any(b <= a for a, b in zip(positions, positions[1:])):
            raise ValueError(f"positions in colormap spec {spec!r} must be strictly increasing")
    else:
        positions = list(np.linspace(0.0, 1.0, len(tokens)))
        colors = [_parse_color(t, spec) for t in tokens]
    # Snap stops to table entries with the same rounding as the lookup, so that a
    # value equal to a stop position gets exactly the stop color (0.5 -> white in bwr).
    index = np.floor(np.asarray(positions) * 255.0 + 0.5)
    if np.any(np.diff(index) <= 0):
        raise ValueError(f"stops in colormap spec {spec!r} are closer than 1/255")
    colors_arr = np.asarray(colors, dtype=np.float64)
    grid_ = np.arange(256, dtype=np.float64)
    return np.stack([_to_uint8(np.interp(grid_, index, colors_arr[:, c])) for c in range(3)], axis=1)


_SPECS = {
    # diverging, centered at 0.5
    "bwr": ("0:00f,0.5:fff,1:f00", True),
    "coldnhot": ("0:0ff,0.25:00f,0.5:000,0.7:f00,0.85:ff0,1:fff", True),
    "seismic": ("0:00004d,0.25:00f,0.5:fff,0.75:f00,1:800000", True),
    # sequential
    "gray": ("000,fff", False),
    "hot": ("0:000,0.375:f00,0.75:ff0,1:fff", False),
    "magma": ("000004,3b0f70,8c2981,de4968,fe9f6d,fcfdbf", False),
    "viridis": ("440154,414487,2a788e,22a884,7ad151,fde725", False),
}

#: The registered colormaps by name (read-only).
COLORMAPS: Mapping[str, Colormap] = MappingProxyType(
    {name: Colormap(name, _parse_spec(spec), diverging) for name, (spec, diverging) in _SPECS.items()}
)


def colormap(spec: Union[str, Colormap], *, diverging: Optional[bool] = None) -> Colormap:
    """Look up a registered colormap or build one from a spec string.

    Parameters
    ----------
    spec
        A registered name (see :data:`COLORMAPS`), a :class:`Colormap` (returned
        as is unless ``diverging`` changes it), or a spec of comma-separated stops:
        ``"position:hexcolor,..."`` with positions strictly increasing in
        ``[0, 1]`` (colors beyond the first/last stop are held constant), or just
        ``"hexcolor,..."`` for equally spaced stops.  Colors are 3 or 6 hex digits,
        optionally prefixed with ``#``.
    diverging
        Override whether the map is centered at zero.  Default: the registered
        value for names, ``False`` for spec strings.

    Returns
    -------
    Colormap

    Raises
    ------
    ValueError
        For an unknown name or a malformed spec (bad hex color, position outside
        ``[0, 1]`` or not increasing, fewer than two stops).

    Examples
    --------
    >>> colormap("bwr").diverging
    True
    >>> colormap("000,fff")(0.5).tolist()
    [128, 128, 128]
    """
    if isinstance(spec, Colormap):
        cmap = spec
    elif not isinstance(spec, str):
        raise TypeError(f"colormap must be a name, spec string or Colormap, got {type(spec).__name__}")
    elif spec.strip() in COLORMAPS:
        cmap = COLORMAPS[spec.strip()]
    elif "," in spec or ":" in spec:
        cmap = Colormap(spec, _parse_spec(spec), False)
    else:
        raise ValueError(f"unknown colormap {spec!r}; registered: {', '.join(COLORMAPS)}; "
                         "or give a spec such as '0:00f,0.5:fff,1:f00' or '00f,fff,f00'")
    if diverging is not None and diverging != cmap.diverging:
        cmap = Colormap(cmap.name, cmap.lut, diverging)
    return cmap


# --------------------------------------------------------------------------- arrays
def reduce_channels(relevance: ArrayLike, how: str = "sum") -> np.ndarray:
    """Reduce channel-first relevance to one value per pixel.

    Parameters
    ----------
    relevance
        ``(H, W)`` (returned unchanged, as float), ``(C, H, W)`` or ``(N, C, H, W)``;
        the channel axis is the third from the end.
    how
        ``"sum"`` (signed sum over channels), ``"norm"`` (L2 norm over channels,
        non-negative) or ``"max-abs"`` (per pixel, the signed channel value with
        the largest magnitude; the first channel wins ties).

    Returns
    -------
    numpy.ndarray
        Float64 array ``(H, W)`` or ``(N, H, W)``.

    Raises
    ------
    ValueError
        For an unknown ``how``, an unsupported number of dimensions, or NaN/inf.
    """
    if how not in _REDUCTIONS:
        raise ValueError(f"unknown channel reduction {how!r}; expected one of {', '.join(_REDUCTIONS)}")
    r = _as_float(relevance)
    if r.ndim == 2:
        return r
    if r.ndim not in (3, 4):
        raise ValueError(f"relevance must be (H, W), (C, H, W) or (N, C, H, W), got shape {r.shape}")
    # Work on r / max|r| so that sums and squares of huge values cannot overflow.
    scale = float(np.abs(r).max()) if r.size else 0.0
    if scale == 0.0:
        return np.zeros(r.shape[:-3] + r.shape[-2:])
    unit = r / scale
    if how == "sum":
        out = unit.sum(axis=-3)
    elif how == "norm":
        out = np.sqrt(np.square(unit).sum(axis=-3))
    else:
        idx = np.abs(unit).argmax(axis=-3)
        out = np.take_along_axis(unit, np.expand_dims(idx, -3), axis=-3).squeeze(-3)
    return out * scale


def normalize(relevance: ArrayLike, mode: str = "symmetric", *,
              clip_percentile: Optional[float] = None) -> np.ndarray:
    """Scale relevance to ``[0, 1]`` for a colormap.

    Parameters
    ----------
    relevance
        Array of any shape.
    mode
        ``"symmetric"``: ``R / max|R|`` mapped from ``[-1, 1]`` to ``[0, 1]``, so
        zero relevance is ``0.5`` (for diverging maps).
        ``"absolute"``: ``|R| / max|R|`` (for sequential maps).
        ``"unaligned"``: ``min(R) -> 0``, ``max(R) -> 1``.
    clip_percentile
        If given (in ``(0, 100]``), clip ``|R|`` at this percentile of ``|R|``
        before normalizing, so a few outliers do not wash out the rest; e.g.
        ``99.5``.

    Returns
    -------
    numpy.ndarray
        Float64 array of the input shape with values in ``[0, 1]``.  A map that
        is all zero (also after clipping) gives ``0.5`` (symmetric, unaligned) or
        ``0`` (absolute); a constant non-zero map gives ``0.5`` for unaligned.

    Raises
    ------
    ValueError
        For an unknown mode, a percentile outside ``(0, 100]``, or NaN/inf input.
    """
    if mode not in _MODES:
        raise ValueError(f"unknown normalization mode {mode!r}; expected one of {', '.join(_MODES)}")
    r = _as_float(relevance)
    if r.size == 0:
        return r
    scale = _scale(r, clip_percentile)
    r = np.clip(r, -scale, scale)
    if scale == 0.0:
        return np.full(r.shape, 0.0 if mode == "absolute" else 0.5)
    unit = r / scale  # in [-1, 1]; no overflow since |r| <= scale
    if mode == "symmetric":
        return np.clip(unit * 0.5 + 0.5, 0.0, 1.0)
    if mode == "absolute":
        return np.clip(np.abs(unit), 0.0, 1.0)
    lo, hi = float(unit.min()), float(unit.max())
    if hi == lo:
        return np.full(r.shape, 0.5)
    return np.clip((unit - lo) / (hi - lo), 0.0, 1.0)


def _scale(r: np.ndarray, clip_percentile: Optional[float]) -> float:
    """The ``|R|`` that maps to the ends of the colormap: ``max |R|``, or the
    ``clip_percentile`` percentile of ``|R|``."""
    if clip_percentile is None:
        return float(np.abs(r).max()) if r.size else 0.0
    if not 0.0 < clip_percentile <= 100.0:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    return float(np.percentile(np.abs(r), clip_percentile))


def _one_map(relevance: ArrayLike, reduce: str) -> np.ndarray:
    """One ``(H, W)`` map from ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` relevance."""
    r = _as_float(relevance)
    if r.ndim == 4:
        if r.shape[0] != 1:
            raise ValueError(f"heatmap renders one map, got a batch of {r.shape[0]}; use grid()")
        r = r[0]
    if r.ndim not in (2, 3):
        raise ValueError(f"relevance must be (H, W), (C, H, W) or (1, C, H, W), got shape {r.shape}")
    return reduce_channels(r, reduce)


def value_range(relevance: ArrayLike, cmap: Union[str, Colormap] = "bwr", *, reduce: str = "sum",
                mode: Optional[str] = None, clip_percentile: Optional[float] = None
                ) -> Tuple[float, float]:
    """The relevance values that :func:`heatmap` maps to the two ends of the colormap.

    Parameters
    ----------
    relevance, cmap, reduce, mode, clip_percentile
        As for :func:`heatmap`.

    Returns
    -------
    (low, high)
        ``(-s, s)`` for ``mode="symmetric"``, ``(0, s)`` of ``|R|`` for
        ``"absolute"``, and the smallest and largest (clipped) value for
        ``"unaligned"``, where ``s`` is ``max |R|`` or the ``clip_percentile``
        percentile of ``|R|`` (after the channel reduction).
    """
    cm = colormap(cmap)
    mode = mode or ("symmetric" if cm.diverging else "absolute")
    if mode not in _MODES:
        raise ValueError(f"unknown normalization mode {mode!r}; expected one of {', '.join(_MODES)}")
    r = _one_map(relevance, reduce)
    s = _scale(r, clip_percentile)
    if mode == "symmetric":
        return -s, s
    if mode == "absolute":
        return 0.0, s
    clipped = np.clip(r, -s, s)
    return float(clipped.min()), float(clipped.max())


# --------------------------------------------------------------------------- images
def heatmap(relevance: ArrayLike, cmap: Union[str, Colormap] = "bwr", *, reduce: str = "sum",
            mode: Optional[str] = None, clip_percentile: Optional[float] = None,
            rgb: bool = True) -> Image.Image:
    """Render one relevance map as an image.

    Parameters
    ----------
    relevance
        ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` (use :func:`grid` for batches).
    cmap
        Colormap name, spec string or :class:`Colormap` (see :func:`colormap`).
    reduce
        Channel reduction, see :func:`reduce_channels`.
    mode
        Normalization, see :func:`normalize`.  Default: ``"symmetric"`` for
        diverging colormaps, ``"absolute"`` for sequential ones.
    clip_percentile
        Percentile clipping of ``|R|``, see :func:`normalize`.
    rgb
        If ``False``, return the normalized values as a single-channel ``"L"``
        image (the 8-bit colormap indices, i.e. the ``"gray"`` rendering); the
        colormap then only chooses the default ``mode``.

    Returns
    -------
    PIL.Image.Image
        ``"RGB"`` (or ``"L"``) image of size ``W x H``.
    """
    cm = colormap(cmap)
    values = normalize(_one_map(relevance, reduce),
                       mode or ("symmetric" if cm.diverging else "absolute"),
                       clip_percentile=clip_percentile)
    index = _to_index(values)
    return Image.fromarray(index if not rgb else np.ascontiguousarray(cm.lut[index]))


def _image_to_float(image: Union[Image.Image, ArrayLike], mean: Optional[ArrayLike],
                    std: Optional[ArrayLike]) -> np.ndarray:
    """Image as float ``(H, W, 3)`` in ``[0, 255]``."""
    denorm = mean is not None or std is not None
    if isinstance(image, Image.Image):
        if denorm:
            raise ValueError("mean/std apply only to float (C, H, W) images, not PIL images")
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    arr = _to_numpy(image)
    if arr.dtype == np.uint8:
        if denorm:
            raise ValueError("mean/std apply only to float (C, H, W) images, not uint8 arrays")
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (H, W), (H, W, 1) or (H, W, 3), got {arr.shape}")
        return arr.astype(np.float64)
    arr = np.array(arr, dtype=np.float64)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"float images must be (H, W), (C, H, W) or (1, C, H, W) with C in (1, 3), "
                         f"got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")
    if denorm:
        m = np.asarray(0.0 if mean is None else _to_numpy(mean), dtype=np.float64).reshape(-1, 1, 1)
        s = np.asarray(1.0 if std is None else _to_numpy(std), dtype=np.float64).reshape(-1, 1, 1)
        if m.shape[0] not in (1, arr.shape[0]) or s.shape[0] not in (1, arr.shape[0]):
            raise ValueError(f"mean/std need 1 or {arr.shape[0]} values")
        arr = arr * s + m
    arr = np.clip(arr, 0.0, 1.0) * 255.0
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return arr.transpose(1, 2, 0)


def overlay(relevance: ArrayLike, image: Union[Image.Image, ArrayLike], *,
            alpha: Optional[float] = None, blend: str = "relevance",
            cmap: Union[str, Colormap] = "bwr", reduce: str = "sum", mode: Optional[str] = None,
            clip_percentile: Optional[float] = None, mean: Optional[ArrayLike] = None,
            std: Optional[ArrayLike] = None) -> Image.Image:
    """Blend a heatmap over the input image.

    With ``blend="relevance"`` (default) each pixel's opacity follows its relevance,
    ``a = alpha * min(|R| / s, 1)`` with ``s`` = ``max |R|`` (or the
    ``clip_percentile`` percentile of ``|R|``, after the channel reduction), so
    strong relevance is opaque and weak relevance leaves the image visible; with
    ``blend="constant"`` every pixel gets ``a = alpha``.  The result is
    ``(1 - a) * image + a * heatmap``, rounded to ``uint8``.

    Parameters
    ----------
    relevance
        Relevance map as for :func:`heatmap`.  Its heatmap (and the opacity) is
        resized bilinearly to the image size if the sizes differ.
    image
        A PIL image (any mode), a ``uint8`` array ``(H, W)``, ``(H, W, 1)`` or
        ``(H, W, 3)``, or a float array/tensor ``(H, W)``, ``(C, H, W)`` or
        ``(1, C, H, W)`` with ``C`` in ``(1, 3)`` and values in ``[0, 1]`` after
        de-normalization.  Grayscale images are repeated to RGB.
    alpha
        Heatmap opacity in ``[0, 1]``: at the largest ``|R|`` for
        ``blend="relevance"`` (default 1), everywhere for ``"constant"`` (default 0.5).
    blend
        ``"relevance"`` or ``"constant"``.
    cmap, reduce, mode, clip_percentile
        As for :func:`heatmap`.
    mean, std
        Per-channel normalization of a float image to undo: the image is
        ``x * std + mean``, then clipped to ``[0, 1]``.  Only for float images.

    Returns
    -------
    PIL.Image.Image
        ``"RGB"`` image of the image's size.
    """
    if blend not in ("relevance", "constant"):
        raise ValueError(f"blend must be 'relevance' or 'constant', got {blend!r}")
    if alpha is None:
        alpha = 1.0 if blend == "relevance" else 0.5
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = _image_to_float(image, mean, std)
    heat = heatmap(relevance, cmap, reduce=reduce, mode=mode, clip_percentile=clip_percentile)
    size = (base.shape[1], base.shape[0])
    if heat.size != size:
        heat = heat.resize(size, _BILINEAR)
    if blend == "constant":
        opacity: Union[float, np.ndarray] = alpha
    else:
        r = _one_map(relevance, reduce)
        s = _scale(r, clip_percentile)
        magnitude = np.clip(np.abs(r) / s, 0.0, 1.0) if s > 0 else np.zeros_like(r)
        if magnitude.shape != base.shape[:2]:
            magnitude = np.asarray(Image.fromarray(magnitude.astype(np.float32)).resize(size, _BILINEAR),
                                   dtype=np.float64).clip(0.0, 1.0)
        opacity = alpha * magnitude[..., None]
    blended = (1.0 - opacity) * base + opacity * np.asarray(heat, dtype=np.float64)
    return Image.fromarray(_to_uint8(blended))


def grid(items: Union[Sequence[Union[Image.Image, ArrayLike]], ArrayLike], *,
         labels: Optional[Sequence[str]] = None, ncols: Optional[int] = None,
         cell_size: Optional[Union[int, Tuple[int, int]]] = None, pad: int = 2,
         cmap: Union[str, Colormap] = "bwr", reduce: str = "sum", mode: Optional[str] = None,
         clip_percentile: Optional[float] = None,
         background: Tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Tile images and/or relevance maps into one image, with optional labels.

    Parameters
    ----------
    items
        A sequence of PIL images and/or relevance maps, or one batched
        ``(N, C, H, W)`` relevance array/tensor.  Relevance maps are rendered with
        :func:`heatmap` (each normalized on its own) using ``cmap``, ``reduce``,
        ``mode`` and ``clip_percentile``.
    labels
        One text per item, drawn centered below its cell with Pillow's default
        font (truncated to the cell width).
    ncols
        Number of columns; default ``ceil(sqrt(N))``.
    cell_size
        ``(width, height)`` or one int for square cells; items of another size
        are resized (bilinear).  Default: the size of the first item.
    pad
        Gap in pixels between cells and around the border.
    cmap, reduce, mode, clip_percentile
        As for :func:`heatmap`.
    background
        RGB color of the gaps (labels are drawn in black).

    Returns
    -------
    PIL.Image.Image
        ``"RGB"`` image of width ``ncols * w + (ncols + 1) * pad`` and height
        ``nrows * (h + label_height) + (nrows + 1) * pad``.
    """
    if hasattr(items, "detach") or isinstance(items, np.ndarray):
        arr = _to_numpy(items)
        if arr.ndim != 4:
            raise ValueError(f"a relevance array for grid() must be (N, C, H, W), got {arr.shape}; "
                             "pass a list of maps otherwise")
        items = list(arr)
    tiles: List[Image.Image] = [
        item.convert("RGB") if isinstance(item, Image.Image)
        else heatmap(item, cmap, reduce=reduce, mode=mode, clip_percentile=clip_percentile)
        for item in items
    ]
    n = len(tiles)
    if n == 0:
        raise ValueError("grid() needs at least one item")
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} items")
    if pad < 0:
        raise ValueError(f"pad must be non-negative, got {pad}")
    if ncols is not None and ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    ncols = min(n, ncols or math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    if cell_size is None:
        cw, ch = tiles[0].size
    elif isinstance(cell_size, int):
        cw = ch = cell_size
    else:
        cw, ch = cell_size
    if cw < 1 or ch < 1:
        raise ValueError(f"cell_size must be positive, got {(cw, ch)}")

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_h = 0
    if labels is not None:
        label_h = measure.textbbox((0, 0), "Ag", font=font)[3] + pad

    canvas = Image.new("RGB", (ncols * cw + (ncols + 1) * pad, nrows * (ch + label_h) + (nrows + 1) * pad),
                       tuple(background))
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        row, col = divmod(i, ncols)
        x = pad + col * (cw + pad)
        y = pad + row * (ch + label_h + pad)
        canvas.paste(tile if tile.size == (cw, ch) else tile.resize((cw, ch), _BILINEAR), (x, y))
        if labels is not None:
            text = _fit_text(str(labels[i]), cw, measure, font)
            width = measure.textlength(text, font=font)
            draw.text((x + (cw - width) / 2, y + ch + pad), text, fill=(0, 0, 0), font=font)
    return canvas


#: Text size (pixels) of labels and colour-bar ticks in :func:`annotate`.
FONT_SIZE = 13


def _font(size: int) -> Any:
    """Pillow's default font at ``size`` (scalable since Pillow 10.1; older: fixed bitmap)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _bar_margin(font: Any) -> Tuple[int, int]:
    """(rows above and below a colour bar for its end labels, text line height)."""
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (FONT_SIZE, 0)
    line_h = ascent + descent
    return (line_h + 1) // 2, line_h


def _tick(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def colorbar(cmap: Union[str, Colormap], low: float, high: float, *, height: int = 256,
             width: int = 14, caption: Optional[str] = None, font_size: int = FONT_SIZE,
             background: Tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """A vertical colour bar with its value scale.

    Row ``y`` of the bar (``0`` at the top, ``height`` rows) has the colour
    ``cmap(1 - y / (height - 1))``, i.e. ``high`` at the top and ``low`` at the bottom;
    ticks label ``high``, the middle value and ``low``.

    Parameters
    ----------
    cmap
        Colormap name, spec or :class:`Colormap`.
    low, high
        Values at the bottom and the top, e.g. from :func:`value_range`.
    height, width
        Size of the coloured bar in pixels (the image is wider: tick labels).
    caption
        Optional text below the bar, e.g. ``"|R|"``.
    font_size
        Text size in pixels (Pillow's default font).
    background
        RGB colour around the bar (text is black).

    Returns
    -------
    PIL.Image.Image
        ``"RGB"`` image of height ``height`` (plus the caption line).
    """
    if height < 2 or width < 1:
        raise ValueError(f"a colour bar needs height >= 2 and width >= 1, got {height}, {width}")
    cm = colormap(cmap)
    colors = cm(1.0 - np.arange(height) / (height - 1))  # (height, 3), top = high
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    ticks = [(0, high), ((height - 1) / 2, (low + high) / 2), (height - 1, low)]
    texts = [_tick(v) for _, v in ticks]
    text_w = int(math.ceil(max(measure.textlength(t, font=font) for t in texts)))
    margin, line_h = _bar_margin(font)
    caption_h = line_h + 2 if caption else 0
    canvas = Image.new("RGB", (width + 8 + text_w + 2, height + 2 * margin + caption_h),
                       tuple(background))
    bar = np.repeat(colors[:, None, :], width, axis=1)
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (1, margin))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, margin - 1, width + 1, margin + height), outline=(128, 128, 128))
    for (y, _), text in zip(ticks, texts):
        yy = margin + int(round(y))
        draw.line((width + 2, yy, width + 4, yy), fill=(0, 0, 0))
        draw.text((width + 6, yy - line_h // 2), text, fill=(0, 0, 0), font=font)
    if caption:
        draw.text((1, margin + height + 2), caption, fill=(0, 0, 0), font=font)
    return canvas


def annotate(image: Image.Image, label: Optional[Union[str, Sequence[str]]] = None, *,
             cmap: Optional[Union[str, Colormap]] = None,
             values: Optional[Tuple[float, float]] = None, caption: Optional[str] = None,
             font_size: int = FONT_SIZE, pad: int = 6,
             background: Tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Put a label above an image and a colour bar with its value scale beside it.

    Parameters
    ----------
    image
        A heatmap or overlay (any PIL image).
    label
        One line of text or several (a sequence, or a string with newlines), drawn
        left-aligned above the image in black with Pillow's default font; lines
        longer than the figure are cut with ``..``.
    cmap, values
        The colormap and the ``(low, high)`` values at its ends (see
        :func:`value_range`): together they add a :func:`colorbar` to the right.
    caption
        Text below the colour bar (e.g. ``"R"`` or ``"|R|"``).
    font_size, pad, background
        Text size, margins in pixels and the background colour.

    Returns
    -------
    PIL.Image.Image
        ``"RGB"``; the image itself is pasted unchanged at ``(pad, pad + label height)``.
    """
    if (cmap is None) != (values is None):
        raise ValueError("a colour bar needs both cmap and values=(low, high)")
    image = image.convert("RGB")
    lines: List[str] = []
    if label is not None:
        lines = label.split("\n") if isinstance(label, str) else [str(t) for t in label]
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, line_h = _bar_margin(font)
    line_h += 2
    bar = None
    if cmap is not None and values is not None:
        bar = colorbar(cmap, values[0], values[1], height=image.height, caption=caption,
                       font_size=font_size, background=background)
    label_h = len(lines) * line_h + (pad // 2 if lines else 0)
    margin = _bar_margin(font)[0] if bar is not None else 0
    image_top = pad + label_h + max(0, margin - pad)
    bottom = image_top + image.height
    width = pad + image.width + pad
    if bar is not None:
        bottom = max(bottom, image_top - margin + bar.height)
        width += bar.width + pad
    canvas = Image.new("RGB", (width, bottom + pad), tuple(background))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((pad, pad + k * line_h), _fit_text(line, width - 2 * pad, measure, font),
                  fill=(0, 0, 0), font=font)
    canvas.paste(image, (pad, image_top))
    if bar is not None:  # the bar's coloured rows line up with the image rows
        canvas.paste(bar, (pad + image.width + pad, image_top - margin))
    return canvas


def _fit_text(text: str, width: int, draw: ImageDraw.ImageDraw, font: Any) -> str:
    """Truncate ``text`` (with ``..``) until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".." if text else ""


def save(image: Image.Image, path: Union[str, "os.PathLike[str]"], **kwargs: Any) -> Path:
    """Save an image, creating parent directories; PNG if ``path`` has no suffix.

    Parameters
    ----------
    image
        A PIL image, e.g. from :func:`heatmap`, :func:`overlay` or :func:`grid`.
    path
        Destination; the format follows the suffix (``.png``, ``.jpg``, ...).
    **kwargs
        Passed to :meth:`PIL.Image.Image.save`.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    if not isinstance(image, Image.Image):
        raise TypeError("save() takes a PIL image (render arrays with heatmap()), "
                        f"got {type(image).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=None if path.suffix else "PNG", **kwargs)
    return path
