"""Token relevance rendering (lrp.text): colours, word merging, HTML, PNG and ANSI."""
import io
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from lrp import text as ltext
from lrp.image import colormap
from lrp.text import detect_scheme, merge_words, to_ansi, to_html, to_png, use_color

BLUE, WHITE, RED = [0, 0, 255], [255, 255, 255], [255, 0, 0]


def test_module_imports_neither_torch_nor_transformers():
    # lrp/__init__ imports torch; load the two numpy/Pillow modules without the package
    root = Path(ltext.__file__).parent
    code = (
        "import importlib.util, sys, types\n"
        f"pkg = types.ModuleType('lrp'); pkg.__path__ = [{str(root)!r}]; sys.modules['lrp'] = pkg\n"
        "for name in ('image', 'text'):\n"
        f"    path = {str(root)!r} + '/' + name + '.py'\n"
        "    spec = importlib.util.spec_from_file_location('lrp.' + name, path)\n"
        "    m = importlib.util.module_from_spec(spec); sys.modules['lrp.' + name] = m\n"
        "    spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ parsing helpers
class Spans(HTMLParser):
    """The token spans of a page: (text, data-relevance, title, background, colour)."""

    def __init__(self):
        super().__init__()
        self.spans, self._open = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "data-relevance" in attrs:
            style = dict(part.split(":") for part in attrs["style"].split(";"))
            self._open = [float(attrs["data-relevance"]), attrs["title"],
                          hex_rgb(style["background-color"]), hex_rgb(style["color"]), ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[-1] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            value, title, background, ink, content = self._open
            self.spans.append((content, value, title, background, ink))
            self._open = None


def hex_rgb(text):
    text = text.strip().lstrip("#")
    return [int(text[i:i + 2], 16) for i in (0, 2, 4)]


def parse_html(page):
    parser = Spans()
    parser.feed(page)
    return parser.spans


ANSI = re.compile(r"( ?)\x1b\[48;2;(\d+);(\d+);(\d+)m\x1b\[38;2;(\d+);(\d+);(\d+)m(.*?)\x1b\[0m")


def parse_ansi(line):
    return [(m.group(8), [int(m.group(k)) for k in (2, 3, 4)], m.group(1) == " ")
            for m in ANSI.finditer(line)]


# ------------------------------------------------------------------ colours
VALUES = [-2.0, -1.0, 0.0, 1.0, 2.0]
TOKENS = ["a", "b", "c", "d", "e"]


def test_colours_are_the_colormap_of_symmetric_normalised_values():
    # symmetric normalisation written out: R / max|R| mapped from [-1, 1] to [0, 1]
    expected = colormap("bwr")(np.array([0.0, 0.25, 0.5, 0.75, 1.0])).tolist()
    assert expected[0] == BLUE and expected[2] == WHITE and expected[4] == RED
    html_colours = [s[3] for s in parse_html(to_html(TOKENS, VALUES))]
    ansi_colours = [c for _, c, _ in parse_ansi(to_ansi(TOKENS, VALUES, color=True))]
    assert html_colours == expected and ansi_colours == expected


def test_sequential_colormap_uses_absolute_values_and_clipping_applies():
    values = np.array([-4.0, 1.0, 2.0, 0.5])
    hot = colormap("hot")
    expected = hot(np.abs(values) / 4.0).tolist()
    assert [s[3] for s in parse_html(to_html(list("wxyz"), values, cmap="hot"))] == expected
    # clipping |R| at the 50th percentile (1.5 here) before the symmetric normalisation
    s = np.percentile(np.abs(values), 50)
    clipped = colormap("bwr")(np.clip(values, -s, s) / s * 0.5 + 0.5).tolist()
    page = to_html(list("wxyz"), values, clip_percentile=50)
    assert [x[3] for x in parse_html(page)] == clipped


def test_ink_is_white_on_dark_boxes():
    spans = parse_html(to_html(TOKENS, VALUES))
    assert spans[0][4] == WHITE and spans[2][4] == [0, 0, 0]  # on blue, on white


def test_all_zero_relevance_is_white():
    assert [s[3] for s in parse_html(to_html(TOKENS, np.zeros(5)))] == [WHITE] * 5


# ------------------------------------------------------------------ words
def test_detect_scheme():
    assert detect_scheme(["[CLS]", "un", "##real", "[SEP]"]) == "wordpiece"
    assert detect_scheme(["The", "\u0120cat", "\u0120sat"]) == "bytelevel"
    assert detect_scheme(["<s>", "\u2581The", "\u2581cat"]) == "sentencepiece"
    assert detect_scheme(["the", "cat"]) == "plain"
    # a vocabulary with a few stray markers of another scheme: the majority wins
    assert detect_scheme(["##a", "##b", "##c", "\u0120x"]) == "wordpiece"


def test_merge_wordpiece():
    tokens = ["[CLS]", "un", "##believ", "##able", "movie", "!", "[SEP]"]
    words, values = merge_words(tokens, [0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert words == ["[CLS]", "unbelievable", "movie", "!", "[SEP]"]
    assert values.tolist() == [0.5, 6.0, 4.0, 5.0, 6.0]


def test_merge_bytelevel_decodes_bytes_across_pieces():
    # "The unbelievable café.\n\nIt" in GPT-2 pieces; é = bytes C3 A9 = "Ã" "©" in the
    # byte alphabet, split over two pieces
    tokens = ["<|endoftext|>", "The", "\u0120un", "belie", "vable", "\u0120caf", "\u00c3",
              "\u00a9", ".", "\u010a\u010a", "It"]
    relevance = np.arange(1.0, 12.0)
    words, values = merge_words(tokens, relevance)
    assert words == ["<|endoftext|>", "The", "unbelievable", "café.", "\\n\\n", "It"]
    assert values.tolist() == [1.0, 2.0, 3 + 4 + 5, 6 + 7 + 8 + 9, 10.0, 11.0]


def test_merge_sentencepiece_with_byte_fallback():
    tokens = ["<s>", "\u2581un", "bel", "ievable", "<0x0A>", "\u2581caf", "<0xC3>", "<0xA9>"]
    words, values = merge_words(tokens, [1, 2, 3, 4, 5, 6, 7, 8])
    assert words == ["<s>", "unbelievable", "\\n", "café"]
    assert values.tolist() == [1, 2 + 3 + 4, 5, 6 + 7 + 8]


def test_merge_plain_and_given_special_tokens():
    words, values = merge_words(["the", "cat"], [1.0, -1.0])
    assert words == ["the", "cat"] and values.tolist() == [1.0, -1.0]
    # a "##" piece after a special token starts a word; <b> is text when special= is given
    words, values = merge_words(["[CLS]", "##x", "<b>", "##y"], [1, 2, 3, 4], scheme="wordpiece",
                                special={"[CLS]"})
    assert words == ["[CLS]", "x", "<b>y"] and values.tolist() == [1, 2, 7]


def test_unmerged_pieces_are_glued_inside_a_word():
    tokens = ["The", "\u0120un", "belie", "vable", "\u0120movie"]
    spans = parse_ansi(to_ansi(tokens, [1, 2, 3, 4, 5], color=True))
    assert [(t, gap) for t, _, gap in spans] == [("The", False), ("un", True), ("belie", False),
                                                 ("vable", False), ("movie", True)]
    page = to_html(tokens, [1, 2, 3, 4, 5])
    assert "</span> <span" in page and "</span><span" in page


# ------------------------------------------------------------------ HTML
def test_html_round_trips_values_and_text():
    rng = np.random.default_rng(0)
    tokens = ["[CLS]", "un", "##real", "<b>&", "film", "[SEP]"]
    relevance = rng.normal(size=6)
    page = to_html(tokens, relevance, label=["explains <x>", "second line"], special={"[CLS]", "[SEP]"})
    assert page.startswith("<!DOCTYPE html>") and "http" not in page and "src=" not in page
    spans = parse_html(page)
    assert [s[0] for s in spans] == ["[CLS]", "un", "real", "<b>&", "film", "[SEP]"]
    assert [s[1] for s in spans] == relevance.tolist()  # exact
    assert [float(s[2]) for s in spans] == pytest.approx(relevance.tolist(), rel=1e-3)  # hover
    assert "explains &lt;x&gt;" in page
    merged = parse_html(to_html(tokens, relevance, merge=True, special={"[CLS]", "[SEP]"}))
    words, values = merge_words(tokens, relevance, special={"[CLS]", "[SEP]"})
    assert [s[0] for s in merged] == words and [s[1] for s in merged] == values.tolist()


def test_html_colour_scale_shows_the_value_range():
    page = to_html(TOKENS, VALUES)
    assert "-2</span>" in page and "+2</span>" in page and "linear-gradient" in page
    assert "linear-gradient" not in to_html(TOKENS, VALUES, colorbar=False)


# ------------------------------------------------------------------ PNG
def colour_boxes(image, colours):
    """Per colour: the box (x0, y0, x1, y1) filled with it and the count of its pixels
    inside.  The box is found from its longest horizontal run of the colour (its
    padding rows) and the rows where both ends of that run have the colour (its
    padding columns); stray pixels of the same colour in anti-aliased text elsewhere
    form no such run."""
    pixels = np.asarray(image)
    found = []
    for colour in colours:
        mask = (pixels == np.asarray(colour, dtype=np.uint8)).all(axis=-1)
        if not mask.any():
            found.append(None)
            continue
        best = (0, 0, 0, 0)  # length, row, start, end
        for y in np.nonzero(mask.any(axis=1))[0]:
            row = np.concatenate([[0], mask[y].astype(np.int8), [0]])
            edges = np.diff(row)
            for x0, x1 in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]):
                if x1 - x0 > best[0]:
                    best = (x1 - x0, y, x0, x1 - 1)
        _, y, x0, x1 = best
        y0 = y1 = y
        while y0 > 0 and mask[y0 - 1, x0] and mask[y0 - 1, x1]:
            y0 -= 1
        while y1 + 1 < mask.shape[0] and mask[y1 + 1, x0] and mask[y1 + 1, x1]:
            y1 += 1
        found.append(((x0, y0, x1, y1), int(mask[y0:y1 + 1, x0:x1 + 1].sum())))
    return found


def test_png_token_boxes_have_their_colours_in_order():
    values = np.array([3.0, -1.0, 2.0, -2.5, 0.5])
    tokens = ["alpha", "beta", "gamma", "delta", "eps"]
    expected = colormap("bwr")(values / 3.0 * 0.5 + 0.5).tolist()
    assert len({tuple(c) for c in expected}) == 5
    image = to_png(tokens, values, colorbar=False)
    boxes = colour_boxes(image, expected)
    assert all(b is not None for b in boxes)
    heights = {b[0][3] - b[0][1] + 1 for b in boxes}
    assert len(heights) == 1 and heights.pop() >= ltext.FONT_SIZE  # one line of equal boxes
    for (box, count) in boxes:  # the box is filled: text covers only part of it
        area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
        assert count >= 0.5 * area
    lefts = [b[0][0] for b in boxes]
    assert lefts == sorted(lefts)  # in token order
    # words are separated by white gaps
    assert all(boxes[i + 1][0][0] - boxes[i][0][2] > 2 for i in range(4))


def test_png_pieces_of_a_word_touch_and_lines_wrap():
    tokens = ["The", "\u0120un", "belie", "vable"]
    values = np.array([1.0, -2.0, 2.0, -1.0])
    expected = colormap("bwr")(values / 2.0 * 0.5 + 0.5).tolist()
    boxes = [b[0] for b in colour_boxes(to_png(tokens, values, colorbar=False), expected)]
    assert boxes[2][0] == boxes[1][2] + 1 and boxes[3][0] == boxes[2][2] + 1
    assert boxes[1][0] - boxes[0][2] > 2
    many = ["word"] * 40
    ramp = np.linspace(-1, 1, 40)
    wide, narrow = to_png(many, ramp, colorbar=False), to_png(many, ramp, colorbar=False, width=120)
    assert narrow.height > 3 * wide.height and narrow.width < wide.width


def test_png_colour_bar_and_label():
    plain = to_png(TOKENS, VALUES, colorbar=False)
    image = to_png(TOKENS, VALUES, label="explains x")
    assert image.width > plain.width and image.height > plain.height
    pixels = np.asarray(image)
    # the bar's top row is the colormap's high end, its bottom row the low end
    red = np.nonzero((pixels == RED).all(-1))
    blue = np.nonzero((pixels == BLUE).all(-1))
    assert red[1].max() > plain.width and blue[1].max() > plain.width
    assert red[0][red[1] > plain.width].min() < blue[0][blue[1] > plain.width].min()


# ------------------------------------------------------------------ terminal
def test_ansi_plain_fallback(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    values = np.array([0.25, -1.5, 3.0])
    out = to_ansi(["a", "##b", "c"], values, stream=io.StringIO())  # not a terminal
    assert "\x1b" not in out
    assert out == "a[+0.25]b[-1.5] c[+3]"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert use_color(Tty()) and "\x1b[48;2;" in to_ansi(["a"], [1.0], stream=Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty()) and "\x1b" not in to_ansi(["a"], [1.0], stream=Tty())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not use_color(Tty())
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert use_color(io.StringIO())


def test_ansi_colour_bar_line():
    out = to_ansi(TOKENS, VALUES, color=True, colorbar=True)
    first, second = out.split("\n")
    assert [t for t, _, _ in parse_ansi(first)] == TOKENS
    assert second.startswith("-2 ") and second.endswith(" +2")
    colours = [c for _, c, _ in parse_ansi(second)]
    assert colours[0] == BLUE and colours[-1] == RED


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("call, message", [
    (lambda: to_html(["a", "b"], [1.0]), "2 tokens but 1"),
    (lambda: to_html(["a"], [[1.0]]), "1-D"),
    (lambda: to_html(["a"], [float("nan")]), "NaN"),
    (lambda: merge_words(["a"], [1.0], scheme="bpe"), "unknown scheme"),
    (lambda: to_png(["a"], [1.0], width=4), "width"),
    (lambda: to_ansi(["a"], [1.0], cmap="nope"), "unknown colormap"),
])
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_tokens_must_be_strings():
    with pytest.raises(TypeError, match="convert_ids_to_tokens"):
        to_html([101, 102], [1.0, 2.0])
