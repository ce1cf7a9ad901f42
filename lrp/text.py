"""Show token relevance: coloured tokens as HTML, PNG and terminal text (numpy + Pillow only).

Every token (or, with ``merge=True``, every word) gets the colour that
:func:`lrp.image.heatmap` would give a pixel of the same relevance: the values are
normalised with :func:`lrp.image.normalize` (symmetric around zero for diverging
colormaps, ``|R| / max|R|`` for sequential ones) and looked up in a
:class:`lrp.image.Colormap`::

    from lrp.text import to_html, to_png, to_ansi

    tokens = tokenizer.convert_ids_to_tokens(input_ids[0])
    html = to_html(tokens, explanation.tokens[0], merge=True)     # a self-contained page
    to_png(tokens, explanation.tokens[0], label="explains 'Paris'").save("tokens.png")
    print(to_ansi(tokens, explanation.tokens[0]))                 # 24-bit colour escapes

Tokens are the strings of ``tokenizer.convert_ids_to_tokens``, word-piece markers
included.  Three marker schemes are understood (:func:`detect_scheme`):

* ``"wordpiece"`` (BERT): a piece ``##x`` continues the word before it;
* ``"bytelevel"`` (GPT-2, RoBERTa, LLaMA 3, Qwen): ``Ġ`` marks a leading space, and
  the pieces are bytes written as printable characters (decoded back to text);
* ``"sentencepiece"`` (LLaMA 2, Mistral, T5): ``▁`` marks a leading space and
  ``<0xNN>`` is a raw byte;
* ``"plain"``: every token is a word of its own.

A word is a piece that starts one (leading whitespace, or no ``##``) and the pieces
that continue it; special tokens (``[CLS]``, ``<s>``, ``<|endoftext|>``, ...) are
words of their own.  Merging sums the relevance over the pieces of a word.  In the
output, whitespace inside a token is shown as ``·`` (space), ``\\n`` and ``\\t``.
"""
from __future__ import annotations

import html
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Collection, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .image import (FONT_SIZE, ArrayLike, Colormap, _as_float, _font, annotate, colormap, normalize,
                    value_range)

__all__ = ["SCHEMES", "detect_scheme", "merge_words", "to_html", "to_png", "to_ansi", "use_color"]

#: The word-piece marker schemes (see the module docstring).
SCHEMES = ("wordpiece", "bytelevel", "sentencepiece", "plain")

_SPECIAL = re.compile(r"\[[A-Za-z_]+\]|<[^<>\s]+>")
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SHOWN_WHITESPACE = {" ": "\u00b7", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _printable_bytes() -> List[int]:
    """The bytes a byte-level BPE writes as themselves: the printable ASCII and Latin-1
    characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``)."""
    return [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]


def _byte_decoder() -> dict:
    """Character -> byte of the byte-level BPE alphabet: a printable byte is its own
    character; the other 68 bytes (controls, space, ...) are ``chr(256 + k)`` in
    increasing byte order (so the space, byte 32, is ``Ġ`` = U+0120)."""
    printable = set(_printable_bytes())
    decoder = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in printable]
    decoder.update({chr(256 + k): b for k, b in enumerate(others)})
    return decoder


_BYTES = _byte_decoder()


# --------------------------------------------------------------------------- pieces and words
def detect_scheme(tokens: Collection[str]) -> str:
    """The word-piece marker scheme of a token list or a whole vocabulary.

    Parameters
    ----------
    tokens
        Token strings (e.g. ``tokenizer.convert_ids_to_tokens(ids)`` or the keys of
        ``tokenizer.get_vocab()``; a vocabulary gives the more reliable answer).

    Returns
    -------
    str
        The scheme with the most marked tokens: ``"bytelevel"`` (tokens starting
        with ``Ġ``), ``"sentencepiece"`` (``▁``) or ``"wordpiece"`` (``##x``);
        ``"plain"`` if no token is marked.
    """
    counts = Counter()
    for token in tokens:
        if token.startswith("\u0120"):
            counts["bytelevel"] += 1
        elif token.startswith("\u2581"):
            counts["sentencepiece"] += 1
        elif token.startswith("##") and len(token) > 2:
            counts["wordpiece"] += 1
    if not counts:
        return "plain"
    return max(("bytelevel", "sentencepiece", "wordpiece"), key=lambda s: counts[s])


@dataclass(frozen=True)
class _Piece:
    data: bytes      # the piece's text as bytes, its leading whitespace included
    starts: bool     # starts a word (else continues the one before)
    special: bool


def _is_special(token: str, special: Optional[Collection[str]], scheme: str) -> bool:
    if special is not None:
        return token in special
    if scheme == "sentencepiece" and _BYTE_TOKEN.fullmatch(token):
        return False
    return _SPECIAL.fullmatch(token) is not None


def _raw(token: str, scheme: str) -> Tuple[bytes, Optional[bool]]:
    """The bytes of one (non-special) token, and whether it starts a word when the
    scheme says so by itself (``None``: decided by whitespace)."""
    if scheme == "wordpiece":
        if token.startswith("##") and len(token) > 2:
            return token[2:].encode(), False
        return token.encode(), True
    if scheme == "plain":
        return token.encode(), True
    if scheme == "bytelevel":
        if all(c in _BYTES for c in token):
            return bytes(_BYTES[c] for c in token), None
        return token.encode(), None  # an added token outside the byte alphabet
    match = _BYTE_TOKEN.fullmatch(token)
    if match:
        return bytes([int(match.group(1), 16)]), None
    return token.replace("\u2581", " ").encode(), None


def _pieces(tokens: Sequence[str], scheme: str, special: Optional[Collection[str]]) -> List[_Piece]:
    pieces: List[_Piece] = []
    for token in tokens:
        if _is_special(token, special, scheme):
            pieces.append(_Piece(token.encode(), True, True))
            continue
        data, starts = _raw(token, scheme)
        previous = pieces[-1] if pieces else None
        if previous is None or previous.special:
            starts = True
        elif starts is None:
            starts = data[:1].isspace() or previous.data[-1:].isspace() or not data
        pieces.append(_Piece(data, starts, False))
    return pieces


@dataclass(frozen=True)
class _Unit:
    text: str          # as shown
    relevance: float
    space: bool        # a gap before it


def _show(data: bytes, first: bool, gap: bool) -> str:
    """Text as shown: the leading space that the gap stands for removed, other
    whitespace made visible."""
    text = data.decode("utf-8", errors="replace")
    if gap or first:
        text = text[1:] if text[:1] == " " else text
    if text.strip() == "":
        return "".join(_SHOWN_WHITESPACE.get(c, c) for c in text) or "\u00b7"
    return "".join(_SHOWN_WHITESPACE.get(c, c) if c in "\n\t\r" else c for c in text)


def _units(tokens: Sequence[str], relevance: ArrayLike, merge: bool, scheme: str,
           special: Optional[Collection[str]]) -> List[_Unit]:
    values = _as_float(relevance)
    if values.ndim != 1:
        raise ValueError(f"relevance must be one value per token (1-D), got shape {values.shape}; "
                         "pass e.g. explanation.tokens[0]")
    tokens = list(tokens)
    bad = next((t for t in tokens if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"tokens must be strings, got {type(bad).__name__} "
                        "(convert ids with tokenizer.convert_ids_to_tokens)")
    if len(tokens) != len(values):
        raise ValueError(f"got {len(tokens)} tokens but {len(values)} relevance values")
    if scheme == "auto":
        scheme = detect_scheme(tokens)
    elif scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected 'auto' or one of {', '.join(SCHEMES)}")
    pieces = _pieces(tokens, scheme, special)
    groups: List[Tuple[bytes, float, bool]] = []
    for i, (piece, value) in enumerate(zip(pieces, values)):
        if merge and groups and not piece.starts:
            data, total, space = groups[-1]
            groups[-1] = (data + piece.data, total + float(value), space)
        else:
            groups.append((piece.data, float(value), i > 0 and piece.starts))
    return [_Unit(_show(data, i == 0, space), total, space)
            for i, (data, total, space) in enumerate(groups)]


def merge_words(tokens: Sequence[str], relevance: ArrayLike, *, scheme: str = "auto",
                special: Optional[Collection[str]] = None) -> Tuple[List[str], np.ndarray]:
    """Merge word pieces into words, summing their relevance.

    Parameters
    ----------
    tokens
        Token strings, e.g. ``tokenizer.convert_ids_to_tokens(ids)``.
    relevance
        One value per token (numpy array, sequence or torch tensor).
    scheme
        ``"auto"`` (:func:`detect_scheme` on ``tokens``) or one of :data:`SCHEMES`.
    special
        The special tokens (each a word of its own); default: tokens written like
        ``[CLS]`` or ``<s>``, ``<|endoftext|>``.

    Returns
    -------
    (words, relevance)
        The words as text (markers removed, byte-level pieces decoded) and the
        float64 sum of the relevance over each word's pieces.

    Examples
    --------
    >>> merge_words(["[CLS]", "un", "##real", "film"], [0.0, 1.0, 2.0, 0.5])[0]
    ['[CLS]', 'unreal', 'film']
    """
    units = _units(tokens, relevance, True, scheme, special)
    return [u.text for u in units], np.array([u.relevance for u in units], dtype=np.float64)


# --------------------------------------------------------------------------- colours
def _colors(values: np.ndarray, cmap: Colormap, clip_percentile: Optional[float]) -> np.ndarray:
    """The heatmap colours of ``values``: :func:`lrp.image.normalize` then ``cmap``."""
    mode = "symmetric" if cmap.diverging else "absolute"
    return cmap(normalize(values, mode, clip_percentile=clip_percentile))


def _ink(background: np.ndarray) -> Tuple[int, int, int]:
    """Black text on light backgrounds, white on dark ones (Rec. 601 luma)."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma >= 128 else (255, 255, 255)


def _prepare(tokens, relevance, merge, scheme, special, cmap, clip_percentile):
    units = _units(tokens, relevance, merge, scheme, special)
    cm = colormap(cmap)
    values = np.array([u.relevance for u in units], dtype=np.float64)
    colors = _colors(values, cm, clip_percentile) if len(units) else np.zeros((0, 3), np.uint8)
    return units, values, colors, cm


def _range(values: np.ndarray, cm: Colormap, clip_percentile: Optional[float]) -> Tuple[float, float]:
    return value_range(values[None, :], cm, clip_percentile=clip_percentile) if values.size else (0., 0.)


def _hex(color: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in color))


def _value(v: float) -> str:
    return "0" if v == 0 else f"{v:+.4g}"


# --------------------------------------------------------------------------- HTML
_CSS = """body{font-family:system-ui,"Segoe UI",sans-serif;margin:1.5em;color:#000;background:#fff}
.lrp-label{margin-bottom:.8em;color:#333}
.lrp-tokens{font-size:17px;line-height:2.1;max-width:60em}
.lrp-tokens span{padding:.18em .12em;border-radius:3px;white-space:pre}
.lrp-scale{margin-top:1em;font-size:13px;color:#333;display:flex;align-items:center;gap:.5em}
.lrp-scale .bar{display:inline-block;width:16em;height:.9em;border:1px solid #888}"""


def to_html(tokens: Sequence[str], relevance: ArrayLike, *, merge: bool = False, scheme: str = "auto",
            special: Optional[Collection[str]] = None, cmap: Union[str, Colormap] = "bwr",
            clip_percentile: Optional[float] = None, label: Optional[Union[str, Sequence[str]]] = None,
            colorbar: bool = True, title: str = "Token relevance") -> str:
    """Tokens coloured by relevance as a self-contained HTML page.

    Each token (word with ``merge=True``) is a ``<span>`` whose background is its
    colour; hovering shows its relevance (``title``) and ``data-relevance`` holds the
    exact value (``repr`` of the float).

    Parameters
    ----------
    tokens, relevance
        Token strings and one relevance value per token (e.g. ``explanation.tokens[0]``).
    merge
        Merge word pieces into words, summing their relevance (:func:`merge_words`).
    scheme, special
        Word-piece scheme and special tokens, see :func:`merge_words`.
    cmap
        Colormap name, spec or :class:`lrp.image.Colormap`; default ``"bwr"``
        (negative blue, zero white, positive red).
    clip_percentile
        Clip ``|R|`` at this percentile before colouring, as for :func:`lrp.image.normalize`.
    label
        Text lines above the tokens (e.g. what was explained).
    colorbar
        Add a colour scale with the values at its ends (:func:`lrp.image.value_range`).
    title
        The page title.

    Returns
    -------
    str
        A complete HTML document (UTF-8, no external resources).
    """
    units, values, colors, cm = _prepare(tokens, relevance, merge, scheme, special, cmap,
                                         clip_percentile)
    parts = ["<!DOCTYPE html>", '<html lang="en">', '<head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style></head>", "<body>"]
    if label is not None:
        lines = label.split("\n") if isinstance(label, str) else [str(t) for t in label]
        parts.append('<div class="lrp-label">' + "<br>".join(html.escape(t) for t in lines) + "</div>")
    spans = []
    for unit, color in zip(units, colors):
        spans.append((" " if unit.space else "")
                     + f'<span style="background-color:{_hex(color)};color:{_hex(_ink(color))}" '
                     f'title="{_value(unit.relevance)}" data-relevance="{unit.relevance!r}">'
                     f"{html.escape(unit.text)}</span>")
    parts.append('<div class="lrp-tokens">' + "".join(spans) + "</div>")
    if colorbar and units:
        low, high = _range(values, cm, clip_percentile)
        stops = ", ".join(f"{_hex(c)} {100 * k / 16:g}%" for k, c in enumerate(cm(np.arange(17) / 16)))
        parts.append(f'<div class="lrp-scale"><span>{_value(low)}</span>'
                     f'<span class="bar" style="background:linear-gradient(to right, {stops})"></span>'
                     f'<span>{_value(high)}</span><span>relevance</span></div>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- PNG
def to_png(tokens: Sequence[str], relevance: ArrayLike, *, merge: bool = False, scheme: str = "auto",
           special: Optional[Collection[str]] = None, cmap: Union[str, Colormap] = "bwr",
           clip_percentile: Optional[float] = None, label: Optional[Union[str, Sequence[str]]] = None,
           colorbar: bool = True, width: int = 640, font_size: int = FONT_SIZE + 3,
           font: Optional[str] = None) -> Image.Image:
    """Tokens coloured by relevance as an image, wrapped into lines.

    Each token (word with ``merge=True``) is drawn on a box of its colour, in black or
    white, whichever reads better; words are separated by a gap, the pieces of one
    word are not, and a line breaks between words (inside a word only if it is wider
    than a line).

    Parameters
    ----------
    tokens, relevance, merge, scheme, special, cmap, clip_percentile
        As for :func:`to_html`.
    label
        Text lines above the tokens, as in :func:`lrp.image.annotate`.
    colorbar
        Add a colour bar with the value scale on the right, as the heatmaps have
        (:func:`lrp.image.colorbar`).
    width
        Width of the token area in pixels (the line length; narrower if the tokens
        fill less than one line).
    font_size
        Text size in pixels.
    font
        A TrueType font file or name (e.g. ``"DejaVuSans.ttf"``); default Pillow's
        default font, which covers ASCII only: other scripts need a font here.

    Returns
    -------
    PIL.Image.Image
        ``"RGB"`` image.
    """
    if width < 16:
        raise ValueError(f"width must be at least 16 pixels, got {width}")
    units, values, colors, cm = _prepare(tokens, relevance, merge, scheme, special, cmap,
                                         clip_percentile)
    face: Any = _font(font_size) if font is None else ImageFont.truetype(font, font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    ascent, descent = face.getmetrics()
    pad_x, pad_y, line_gap = 3, 2, 5
    box_h = ascent + descent + 2 * pad_y
    gap = max(3, int(round(measure.textlength(" ", font=face))))
    sizes = [int(np.ceil(measure.textlength(u.text, font=face))) + 2 * pad_x for u in units]
    # a word: a unit with a gap before it and the units glued to it
    word_width, start = [0] * len(units), 0
    for i, unit in enumerate(units):
        if unit.space or i == 0:
            start = i
        word_width[start] += sizes[i]
    boxes: List[Tuple[int, int, int, int]] = []
    x = y = 0
    for i, unit in enumerate(units):
        dx = gap if unit.space else 0
        need = word_width[i] if (unit.space or i == 0) else sizes[i]
        if x > 0 and x + dx + need > width:
            x, y, dx = 0, y + box_h + line_gap, 0
        boxes.append((x + dx, y, x + dx + sizes[i], y + box_h))
        x += dx + sizes[i]
    height = y + box_h if units else box_h
    if colorbar:
        height = max(height, 60)  # room for the colour bar's three ticks
    used = max((b[2] for b in boxes), default=1)  # a single short line: no blank to its right
    canvas = Image.new("RGB", (min(width, used), height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for unit, color, box in zip(units, colors, boxes):
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=tuple(int(c) for c in color))
        draw.text((box[0] + pad_x, box[1] + pad_y), unit.text, fill=_ink(color), font=face)
    bar = dict(cmap=cm, values=_range(values, cm, clip_percentile), caption="R") if colorbar else {}
    return annotate(canvas, label, **bar)


# --------------------------------------------------------------------------- terminal
def use_color(stream: Any = None) -> bool:
    """Whether to write colour escapes to ``stream`` (default ``sys.stdout``).

    ``NO_COLOR`` (set and not empty) turns colour off, ``FORCE_COLOR`` turns it on;
    otherwise colour is used on a terminal (``isatty``) unless ``TERM=dumb``.
    """
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def _escape(background: Sequence[int]) -> str:
    r, g, b = (int(c) for c in background)
    fr, fg, fb = _ink(background)
    return f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;{fr};{fg};{fb}m"


def to_ansi(tokens: Sequence[str], relevance: ArrayLike, *, merge: bool = False, scheme: str = "auto",
            special: Optional[Collection[str]] = None, cmap: Union[str, Colormap] = "bwr",
            clip_percentile: Optional[float] = None, color: Optional[bool] = None,
            colorbar: bool = False, stream: Any = None) -> str:
    """Tokens coloured by relevance for a terminal (24-bit colour escapes).

    Each token (word with ``merge=True``) is written on a background of its colour
    (``ESC[48;2;R;G;Bm``) in black or white, then ``ESC[0m``.  Without colour, each
    is followed by its value instead: ``movie[+0.123]``.

    Parameters
    ----------
    tokens, relevance, merge, scheme, special, cmap, clip_percentile
        As for :func:`to_html`.
    color
        Use colour escapes; default :func:`use_color` of ``stream``.
    colorbar
        Add a second line with the colour scale and the values at its ends
        (colour only).
    stream
        Where the text will be written, for the default of ``color``.

    Returns
    -------
    str
        The text, without a final newline.
    """
    units, values, colors, cm = _prepare(tokens, relevance, merge, scheme, special, cmap,
                                         clip_percentile)
    if color is None:
        color = use_color(stream)
    if not color:
        return "".join((" " if u.space else "") + f"{u.text}[{u.relevance:+.3g}]" for u in units)
    text = "".join((" " if u.space else "") + _escape(c) + u.text + "\x1b[0m"
                   for u, c in zip(units, colors))
    if colorbar and units:
        low, high = _range(values, cm, clip_percentile)
        scale = "".join(_escape(c) + " \x1b[0m" for c in cm(np.linspace(0.0, 1.0, 24)))
        text += f"\n{_value(low)} {scale} {_value(high)}"
    return text
