"""Every rule against its formula written out densely (no library code in the oracles).

Each layer is turned into an explicit ``(out x in)`` matrix -- for convolutions built
index by index from the kernel, stride, padding and groups -- and the rule's formula
is evaluated with einsum on that matrix.  The library's relevance (from
:func:`lrp.explain` with a random output relevance) must agree to rounding.

Conventions checked here:

* stabilizer ``d -> d + eps * sign(d)`` with ``sign(0) = +1``; LRP-0 has ``0/0 := 0``;
* Flat on a padded convolution: ``n_i`` counts only the in-bounds inputs of output
  ``i`` (the ones-surrogate is zero-padded, so padded taps contribute nothing);
* WSquare / Flat / ZBox ignore the bias; the others include it as stated per rule.
"""
import functools

import pytest
import torch
from torch import nn

import lrp
from lrp import rules as R
from lrp.composites import Composite, LayerMap

DT = torch.float64
RTOL = 1e-8
BATCH = 3


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are tiny: intra-op threading only adds overhead (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------
# dense matrices of the layers (independent of the library)
# ----------------------------------------------------------------------------------------

def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@functools.lru_cache(maxsize=None)
def _conv2d_taps(w_shape, in_shape, stride, padding, groups):
    """For every (output i, in-bounds input j) pair of a convolution: i, j and the flat
    index of the kernel entry connecting them (loops, cached per geometry)."""
    c_out, c_in_g, kh_, kw_ = w_shape
    c, h, w = in_shape
    (sh, sw), (ph, pw) = stride, padding
    oh_ = (h + 2 * ph - kh_) // sh + 1
    ow_ = (w + 2 * pw - kw_) // sw + 1
    rows, cols, taps = [], [], []
    per_group = c_out // groups
    for co in range(c_out):
        g = co // per_group
        for oh in range(oh_):
            for ow in range(ow_):
                row = (co * oh_ + oh) * ow_ + ow
                for cl in range(c_in_g):
                    ci = g * c_in_g + cl
                    for kh in range(kh_):
                        ih = oh * sh - ph + kh
                        if not 0 <= ih < h:
                            continue
                        for kw in range(kw_):
                            iw = ow * sw - pw + kw
                            if not 0 <= iw < w:
                                continue
                            rows.append(row)
                            cols.append((ci * h + ih) * w + iw)
                            taps.append(((co * c_in_g + cl) * kh_ + kh) * kw_ + kw)
    return ((c_out * oh_ * ow_, c * h * w), torch.tensor(rows), torch.tensor(cols),
            torch.tensor(taps), (c_out, oh_, ow_))


def conv2d_matrix(weight, in_shape, stride, padding, groups):
    """Dense matrix (rows: output (co, oh, ow), cols: input (ci, ih, iw)) and its
    connectivity mask (1 where input j is an in-bounds tap of output i)."""
    shape, rows, cols, taps, out_shape = _conv2d_taps(
        tuple(weight.shape), tuple(in_shape), _pair(stride), _pair(padding), groups)
    # (output, input) pairs are distinct: each pair is connected by one kernel entry
    assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows)
    dense = torch.zeros(shape, dtype=weight.dtype)
    dense[rows, cols] = weight.flatten()[taps]
    mask = torch.zeros_like(dense)
    mask[rows, cols] = 1.0
    return dense, mask, out_shape


def avgpool2d_matrix(in_shape, k):
    c, h, w = in_shape
    oh_, ow_ = h // k, w // k
    dense = torch.zeros(c * oh_ * ow_, c * h * w, dtype=DT)
    for ch in range(c):
        for oh in range(oh_):
            for ow in range(ow_):
                row = (ch * oh_ + oh) * ow_ + ow
                for i in range(k):
                    for j in range(k):
                        dense[row, (ch * h + oh * k + i) * w + ow * k + j] = 1.0 / k ** 2
    return dense


class Dense:
    """A layer as explicit matrix ``W`` (out x in), bias ``b`` (out) and mask."""

    def __init__(self, W, b, mask):
        self.W, self.b, self.mask = W, b, mask


# ----------------------------------------------------------------------------------------
# the formulas
# ----------------------------------------------------------------------------------------

def stab(d, eps):
    return d + eps * torch.where(d >= 0, 1.0, -1.0).to(d.dtype)


def distribute(C, bias, R, eps):
    """``R_j = sum_i C_ij / stab(sum_l C_il + bias_i) R_i`` with ``0/0 := 0`` for eps=0.

    C: (batch, out, in), bias: (out,) or None, R: (batch, out)."""
    d = C.sum(-1)
    if bias is not None:
        d = d + bias
    d = stab(d, eps)
    s = torch.where(d == 0, torch.zeros_like(R), R / torch.where(d == 0, 1.0, d))
    return torch.einsum("boi,bo->bi", C, s)


def pos(t):
    return None if t is None else t.clamp(min=0)


def neg(t):
    return None if t is None else t.clamp(max=0)


def contrib(W, a):
    return W[None] * a[:, None, :]


def oracle_basic(L, a, R, eps=0.0, gamma=0.0):
    """LRP-0 / epsilon / gamma: ``W + g W+``, ``b + g b+``."""
    W = L.W + gamma * pos(L.W)
    b = None if L.b is None else L.b + gamma * pos(L.b)
    return distribute(contrib(W, a), b, R, eps)


def oracle_alphabeta(L, a, R, alpha, beta, eps=1e-6):
    C = contrib(L.W, a)                           # products W_ij a_j
    return (alpha * distribute(C.clamp(min=0), pos(L.b), R, eps)
            - beta * distribute(C.clamp(max=0), neg(L.b), R, eps))


def oracle_generalized_gamma(L, a, R, gamma, eps=1e-6):
    W, b = L.W, L.b
    z = a @ W.T + (0 if b is None else b)
    w_up, w_down = W + gamma * pos(W), W + gamma * neg(W)
    up = contrib(w_up, pos(a)) + contrib(w_down, neg(a))
    down = contrib(w_down, pos(a)) + contrib(w_up, neg(a))
    b_up = None if b is None else b + gamma * pos(b)
    b_down = None if b is None else b + gamma * neg(b)
    return (distribute(up, b_up, R * (z > 0), eps)
            + distribute(down, b_down, R * (z < 0), eps))


def oracle_flat(L, a, R, eps=1e-6):
    return distribute(L.mask[None].expand(a.shape[0], -1, -1), None, R, eps)


def oracle_wsquare(L, a, R, eps=1e-6):
    return distribute((L.W ** 2)[None].expand(a.shape[0], -1, -1), None, R, eps)


def oracle_zbox(L, a, R, low, high, eps=1e-6):
    """low, high: (batch, in) flattened bounds."""
    C = contrib(L.W, a) - contrib(pos(L.W), low) - contrib(neg(L.W), high)
    return distribute(C, None, R, eps)


P = functools.partial
#: name -> (rule factory, oracle(L, a, R))
RULES = {
    "zero": (lambda: R.Zero(), P(oracle_basic, eps=0.0)),
    "epsilon-default": (lambda: R.Epsilon(), P(oracle_basic, eps=1e-6)),
    "epsilon-0.25": (lambda: R.Epsilon(0.25), P(oracle_basic, eps=0.25)),
    "norm-0.1": (lambda: R.Norm(0.1), P(oracle_basic, eps=0.1)),
    "gamma-default": (lambda: R.Gamma(), P(oracle_basic, eps=1e-6, gamma=0.25)),
    "gamma-1-eps0.1": (lambda: R.Gamma(1.0, epsilon=0.1), P(oracle_basic, eps=0.1, gamma=1.0)),
    "alphabeta-2-1": (lambda: R.AlphaBeta(2, 1), P(oracle_alphabeta, alpha=2, beta=1)),
    "alphabeta-1.5-0.5-eps0.01": (lambda: R.AlphaBeta(1.5, 0.5, epsilon=0.01),
                                  P(oracle_alphabeta, alpha=1.5, beta=0.5, eps=0.01)),
    "zplus": (lambda: R.ZPlus(), P(oracle_alphabeta, alpha=1, beta=0)),
    "zplus-eps0.3": (lambda: R.ZPlus(epsilon=0.3), P(oracle_alphabeta, alpha=1, beta=0, eps=0.3)),
    "ggamma-default": (lambda: R.GeneralizedGamma(), P(oracle_generalized_gamma, gamma=0.25)),
    "ggamma-0.5-eps0.05": (lambda: R.GeneralizedGamma(0.5, epsilon=0.05),
                           P(oracle_generalized_gamma, gamma=0.5, eps=0.05)),
    "flat": (lambda: R.Flat(), oracle_flat),
    "flat-eps0.5": (lambda: R.Flat(epsilon=0.5), P(oracle_flat, eps=0.5)),
    "wsquare": (lambda: R.WSquare(), oracle_wsquare),
    "wsquare-eps0.2": (lambda: R.WSquare(epsilon=0.2), P(oracle_wsquare, eps=0.2)),
    "zbox-scalar": (lambda: R.ZBox(-3.0, 2.5),
                    lambda L, a, Rr: oracle_zbox(L, a, Rr, torch.full_like(a, -3.0),
                                                 torch.full_like(a, 2.5))),
}


# ----------------------------------------------------------------------------------------
# layers, inputs, and running the library
# ----------------------------------------------------------------------------------------

#: name -> (module factory, input shape without batch)
LAYERS = {
    "linear": (lambda: nn.Linear(6, 4), (6,)),
    "linear-nobias": (lambda: nn.Linear(5, 3, bias=False), (5,)),
    "conv-pad1-stride2": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 7)),
    "conv-groups2-nobias": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2,
                                              bias=False), (4, 6, 6)),
    "conv-rect-pad2": (lambda: nn.Conv2d(2, 3, (2, 3), stride=(2, 1), padding=(0, 2)),
                       (2, 5, 4)),
    "conv-1x1-stride2": (lambda: nn.Conv2d(3, 4, 1, stride=2), (3, 7, 6)),
}


def make_layer(name, seed):
    factory, in_shape = LAYERS[name]
    g = torch.Generator().manual_seed(seed)
    layer = factory().to(DT)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=DT))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=DT))
    return layer, in_shape


def dense_of(layer, in_shape):
    W = layer.weight.detach()
    b = None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, nn.Linear):
        return Dense(W.clone(), b, torch.ones_like(W))
    dense, mask, (c_out, oh, ow) = conv2d_matrix(W, in_shape, layer.stride, layer.padding,
                                                 layer.groups)
    bias = None if b is None else b.repeat_interleave(oh * ow)
    return Dense(dense, bias, mask)


def model_of(layer):
    if isinstance(layer, nn.Linear):
        return nn.Sequential(layer).eval()
    return nn.Sequential(layer, nn.Flatten()).eval()


def draw_input(in_shape, kind, g):
    x = torch.randn((BATCH, *in_shape), generator=g, dtype=DT)
    return x.clamp(min=0) if kind == "nonneg" else x


def draw_case(layer, in_shape, kind, seed):
    """Inputs whose layer outputs stay away from 0 (the engine seeds with R_out / z)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(100):
        x = draw_input(in_shape, kind, g)
        with torch.no_grad():
            z = layer(x)
        if z.abs().min() > 1e-3:
            break
    else:  # pragma: no cover
        raise AssertionError("could not draw a well-conditioned input")
    Rout = torch.randn(z.flatten(1).shape, generator=g, dtype=DT)
    return x, Rout


def library_relevance(model, x, rule, Rout, record=()):
    e = lrp.explain(model, x, Composite(LayerMap(0, rule)),
                    target=lambda out: Rout.reshape(out.shape).clone(), audit="off",
                    record=record)
    return e


def assert_agree(actual, expected, msg=""):
    assert torch.isfinite(expected).all()
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * 1e-2 * scale,
                               msg=lambda m: f"{msg}\n{m}")


# ----------------------------------------------------------------------------------------
# the oracle itself
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer_name", [n for n in LAYERS if n.startswith("conv")])
def test_dense_conv_matrix_matches_conv2d(layer_name):
    layer, in_shape = make_layer(layer_name, 0)
    L = dense_of(layer, in_shape)
    x = torch.randn((BATCH, *in_shape), dtype=DT)
    expected = layer(x).detach().flatten(1)
    got = x.flatten(1) @ L.W.T + (0 if L.b is None else L.b)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # every output sees at least one tap; padded borders see fewer than the kernel size
    n = L.mask.sum(1)
    assert (n > 0).all()
    kernel = layer.weight[0].numel()
    if any(_pair(layer.padding)):
        assert (n < kernel).any() and (n == kernel).any()


# ----------------------------------------------------------------------------------------
# every rule on every layer, non-negative and mixed-sign inputs
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["nonneg", "mixed"])
@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule_name", list(RULES))
def test_rule_matches_dense_formula(rule_name, layer_name, kind):
    make_rule, oracle = RULES[rule_name]
    seed = sum(map(ord, rule_name + layer_name + kind))
    layer, in_shape = make_layer(layer_name, seed)
    x, Rout = draw_case(layer, in_shape, kind, seed + 1)
    if kind == "nonneg":
        assert (x == 0).any() and (x > 0).any()
    else:
        assert (x < 0).any()
    e = library_relevance(model_of(layer), x, make_rule(), Rout)
    L = dense_of(layer, in_shape)
    expected = oracle(L, x.flatten(1), Rout)
    assert e.relevance.shape == x.shape
    assert_agree(e.relevance.flatten(1), expected, f"{rule_name} on {layer_name} ({kind})")


@pytest.mark.parametrize("layer_name", ["linear", "conv-pad1-stride2", "conv-groups2-nobias"])
def test_generalized_gamma_relevance_only_on_positive_outputs(layer_name):
    """As behind a ReLU: negative outputs carry no relevance (the skipped branch)."""
    layer, in_shape = make_layer(layer_name, 7)
    x, Rout = draw_case(layer, in_shape, "nonneg", 8)
    z = layer(x).detach().flatten(1)
    assert (z < 0).any()
    Rout = Rout.abs() * (z > 0)
    e = library_relevance(model_of(layer), x, R.GeneralizedGamma(0.3), Rout)
    expected = oracle_generalized_gamma(dense_of(layer, in_shape), x.flatten(1), Rout, 0.3)
    assert_agree(e.relevance.flatten(1), expected)
    # there, it is exactly LRP-gamma
    gamma = oracle_basic(dense_of(layer, in_shape), x.flatten(1), Rout, eps=1e-6, gamma=0.3)
    assert_agree(e.relevance.flatten(1), gamma)


def test_flat_on_padded_conv_counts_only_in_bounds_inputs():
    """n_i of Flat = number of in-bounds taps; a corner output of a 3x3 kernel with
    padding 1 has 4 in-bounds taps per input channel, not 9."""
    layer = nn.Conv2d(1, 1, 3, padding=1, bias=False).to(DT)
    x = torch.rand(1, 1, 4, 4, dtype=DT) + 0.5
    with torch.no_grad():
        layer.weight.fill_(1.0)   # z > 0 everywhere
    Rout = torch.zeros(1, 16, dtype=DT)
    Rout[0, 0] = 1.0          # only the top-left output carries relevance
    e = library_relevance(model_of(layer), x, R.Flat(epsilon=0.0), Rout)
    expected = torch.zeros(1, 1, 4, 4, dtype=DT)
    expected[0, 0, :2, :2] = 0.25
    assert_agree(e.relevance, expected)


# ----------------------------------------------------------------------------------------
# stabilizer conventions
# ----------------------------------------------------------------------------------------

def test_stabilizer_sign_of_zero_is_positive():
    """A ZBox denominator that is exactly +0 is replaced by +eps."""
    layer = nn.Linear(2, 1).to(DT)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0]], dtype=DT))
        layer.bias.fill_(1.0)              # true output 1 (ZBox ignores the bias)
    x = torch.ones(1, 2, dtype=DT)
    # numerators W a - W+ l - W- h with l = h = 0: (1, -1), denominator 0
    rule = R.ZBox(torch.zeros(2, dtype=DT), torch.zeros(2, dtype=DT), epsilon=0.01)
    Rout = torch.tensor([[2.0]], dtype=DT)
    e = library_relevance(nn.Sequential(layer), x, rule, Rout)
    assert_agree(e.relevance, torch.tensor([[200.0, -200.0]], dtype=DT))


def test_zero_rule_zero_over_zero_is_zero():
    layer = nn.Linear(4, 3, bias=False).to(DT)
    x = torch.randn(2, 4, dtype=DT)
    x[1] = 0.0                             # second sample: z = 0, numerators 0
    e = lrp.explain(nn.Sequential(layer), x, Composite(LayerMap(0, R.Zero())), target=0,
                    audit="off")
    assert torch.isfinite(e.relevance).all()
    assert (e.relevance[1] == 0).all()
    assert_agree(e.relevance[0], x[0] * layer.weight[0].detach())   # R = logit: R_j = W_0j x_j


@pytest.mark.parametrize("layer_name", ["linear", "conv-pad1-stride2"])
def test_gradient_rule_is_lrp0_from_the_dense_formula(layer_name):
    """rules.Gradient (the layer's own gradient) is LRP-0 wherever no output is zero, and
    the recorded relevance at the layer's output is the seeded one."""
    layer, in_shape = make_layer(layer_name, 3)
    x, Rout = draw_case(layer, in_shape, "mixed", 4)
    e = library_relevance(model_of(layer), x, R.Gradient(), Rout, record=["0"])
    assert_agree(e.relevance, oracle_basic(dense_of(layer, in_shape), x.flatten(1), Rout)
                 .reshape(x.shape))
    assert_agree(e.layer_relevance["0"].flatten(1), Rout)


# ----------------------------------------------------------------------------------------
# ZBox bounds
# ----------------------------------------------------------------------------------------

def _zbox_bounds(kind, in_shape, g):
    """(rule bounds, flattened per-element bounds as (low, high) of shape (in,) or
    (batch, in))."""
    if kind == "scalar":
        return (-1.5, 2.0), (torch.full(in_shape, -1.5, dtype=DT), torch.full(in_shape, 2.0, dtype=DT))
    if kind == "per-channel":
        c = in_shape[0]
        low = -torch.rand(c, generator=g, dtype=DT) - 1.0
        high = torch.rand(c, generator=g, dtype=DT) + 1.0
        view = (c,) + (1,) * (len(in_shape) - 1)
        return (low, high), (low.view(view).expand(in_shape), high.view(view).expand(in_shape))
    if kind == "full":
        low = -torch.rand(in_shape, generator=g, dtype=DT) - 1.0
        high = torch.rand(in_shape, generator=g, dtype=DT) + 1.0
        return (low, high), (low, high)
    if kind == "batch-full":
        low = -torch.rand((BATCH, *in_shape), generator=g, dtype=DT) - 1.0
        high = torch.rand((BATCH, *in_shape), generator=g, dtype=DT) + 1.0
        return (low, high), (low, high)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["nonneg", "mixed"])
@pytest.mark.parametrize("bounds", ["scalar", "per-channel", "full", "batch-full"])
@pytest.mark.parametrize("layer_name", ["linear", "conv-pad1-stride2", "conv-groups2-nobias"])
def test_zbox_bounds(layer_name, bounds, kind):
    seed = sum(map(ord, layer_name + bounds + kind))
    layer, in_shape = make_layer(layer_name, seed)
    x, Rout = draw_case(layer, in_shape, kind, seed)
    (low, high), (lo, hi) = _zbox_bounds(bounds, in_shape, torch.Generator().manual_seed(seed))
    lo = lo.expand(BATCH, *in_shape).reshape(BATCH, -1)
    hi = hi.expand(BATCH, *in_shape).reshape(BATCH, -1)
    e = library_relevance(model_of(layer), x, R.ZBox(low, high, epsilon=1e-3), Rout)
    expected = oracle_zbox(dense_of(layer, in_shape), x.flatten(1), Rout, lo, hi, eps=1e-3)
    assert_agree(e.relevance.flatten(1), expected, f"{bounds} bounds on {layer_name}")


def test_zbox_per_channel_bound_when_width_equals_channels():
    """A 1-D bound of length C is per channel even when the width is also C."""
    layer = nn.Conv2d(3, 2, 3, padding=1).to(DT)
    in_shape = (3, 3, 3)
    x, Rout = draw_case(layer, in_shape, "mixed", 3)
    low = torch.tensor([-1.0, -2.0, -3.0], dtype=DT)
    high = torch.tensor([1.0, 2.0, 4.0], dtype=DT)
    e = library_relevance(model_of(layer), x, R.ZBox(low, high), Rout)
    lo = low.view(3, 1, 1).expand(BATCH, *in_shape).reshape(BATCH, -1)
    hi = high.view(3, 1, 1).expand(BATCH, *in_shape).reshape(BATCH, -1)
    expected = oracle_zbox(dense_of(layer, in_shape), x.flatten(1), Rout, lo, hi)
    assert_agree(e.relevance.flatten(1), expected)


def test_zbox_python_float_bounds_keep_float64_precision():
    """Bounds given as Python floats must not be rounded to float32 for a float64 model."""
    layer, in_shape = make_layer("linear", 11)
    x, Rout = draw_case(layer, in_shape, "mixed", 12)
    low, high = -0.3, 1.7                  # not representable in binary
    e = library_relevance(model_of(layer), x, R.ZBox(low, high), Rout)
    expected = oracle_zbox(dense_of(layer, in_shape), x.flatten(1), Rout,
                           torch.full((BATCH, 6), low, dtype=DT),
                           torch.full((BATCH, 6), high, dtype=DT))
    assert_agree(e.relevance, expected)


@pytest.mark.parametrize("layer_name,bad_shape", [
    ("linear", (4,)), ("linear", (2, 6)), ("conv-pad1-stride2", (5,)),
    ("conv-pad1-stride2", (3, 6, 6)), ("conv-groups2-nobias", (2, 1, 1)),
])
@pytest.mark.parametrize("which", ["low", "high"])
def test_zbox_wrong_bound_shape_raises(layer_name, bad_shape, which):
    layer, in_shape = make_layer(layer_name, 0)
    x = torch.randn((BATCH, *in_shape), dtype=DT)
    bad = torch.zeros(bad_shape, dtype=DT)
    low, high = (bad - 1.0, 1.0) if which == "low" else (-1.0, bad + 1.0)
    with pytest.raises(ValueError, match=r"\(" + ", ".join(map(str, bad_shape))):
        lrp.explain(model_of(layer), x, Composite(LayerMap(0, R.ZBox(low, high))),
                    target=0, audit="off")


def test_zbox_incompatible_low_high_raise():
    with pytest.raises(ValueError, match="shape"):
        R.ZBox(torch.zeros(3), torch.ones(4))
    with pytest.raises(ValueError):
        R.ZBox(1.0, -1.0)


@pytest.mark.parametrize("alpha,beta", [(2, 0.5), (1, 1), (0.5, -0.5), (3, 1)])
def test_alphabeta_requires_alpha_minus_beta_one(alpha, beta):
    with pytest.raises(ValueError):
        R.AlphaBeta(alpha=alpha, beta=beta)


# ----------------------------------------------------------------------------------------
# a rule on an inner layer
# ----------------------------------------------------------------------------------------

INNER = {
    "flat": (lambda: R.Flat(), oracle_flat),
    "wsquare": (lambda: R.WSquare(), oracle_wsquare),
    "zbox": (lambda: R.ZBox(-2.0, 1.5),
             lambda L, a, Rr: oracle_zbox(L, a, Rr, torch.full_like(a, -2.0),
                                          torch.full_like(a, 1.5))),
    "alphabeta": (lambda: R.AlphaBeta(2, 1), P(oracle_alphabeta, alpha=2, beta=1)),
    "ggamma": (lambda: R.GeneralizedGamma(0.25), P(oracle_generalized_gamma, gamma=0.25)),
}


def _two_linears(seed):
    g = torch.Generator().manual_seed(seed)
    first, second = nn.Linear(5, 7).to(DT), nn.Linear(7, 3).to(DT)
    with torch.no_grad():
        for p in (*first.parameters(), *second.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT))
    x = torch.randn(BATCH, 5, generator=g, dtype=DT)
    Rout = torch.randn(BATCH, 3, generator=g, dtype=DT)
    return first, second, x, Rout


@pytest.mark.parametrize("rule_name", list(INNER))
def test_rule_on_inner_layer(rule_name):
    """Sequential(Linear, Linear): LRP-0 on the first, the rule on the second.  The
    relevance at the inner activation is the rule's formula; the input relevance is
    LRP-0 of the first layer applied to it."""
    make_rule, oracle = INNER[rule_name]
    first, second, x, Rout = _two_linears(sum(map(ord, rule_name)))
    model = nn.Sequential(first, second).eval()
    e = lrp.explain(model, x, Composite(LayerMap(0, R.Zero()), LayerMap("1", make_rule())),
                    target=lambda out: Rout.clone(), audit="off", record=["0", "1"])
    a = (x @ first.weight.T + first.bias).detach()
    assert a.abs().min() > 1e-3 and (model(x).abs() > 1e-3).all()
    L2 = Dense(second.weight.detach(), second.bias.detach(), torch.ones(3, 7, dtype=DT))
    R_inner = oracle(L2, a, Rout)
    L1 = Dense(first.weight.detach(), first.bias.detach(), torch.ones(7, 5, dtype=DT))
    assert_agree(e.layer_relevance["1"], Rout, "relevance at the model output")
    assert_agree(e.layer_relevance["0"], R_inner, "relevance at the inner activation")
    assert_agree(e.relevance, oracle_basic(L1, x, R_inner), "input relevance")


@pytest.mark.parametrize("rule_name", ["flat", "wsquare", "zbox"])
def test_inner_rule_behind_relu_loses_relevance_on_zero_activations(rule_name):
    """Sequential(Linear, ReLU, Linear): relevance that Flat/WSquare/ZBox put on
    exactly-zero activations is lost (documented); the rest flows on by LRP-0."""
    make_rule, oracle = INNER[rule_name]
    first, second, x, Rout = _two_linears(100 + len(rule_name))
    model = nn.Sequential(first, nn.ReLU(), second).eval()
    e = lrp.explain(model, x, Composite(LayerMap(0, R.Zero()), LayerMap("2", make_rule())),
                    target=lambda out: Rout.clone(), audit="off")
    h = (x @ first.weight.T + first.bias).detach()
    assert (h < 0).any() and (h.abs() > 1e-3).all()
    a = h.clamp(min=0)
    L2 = Dense(second.weight.detach(), second.bias.detach(), torch.ones(3, 7, dtype=DT))
    R_inner = oracle(L2, a, Rout)
    assert (R_inner[a == 0] != 0).any()    # the rule does assign relevance there
    L1 = Dense(first.weight.detach(), first.bias.detach(), torch.ones(7, 5, dtype=DT))
    assert_agree(e.relevance, oracle_basic(L1, x, R_inner * (a > 0)))


# ----------------------------------------------------------------------------------------
# parameter-free rules: Pass, Norm on average pooling, LayerNormRule
# ----------------------------------------------------------------------------------------

def _shape_preserving(name, g):
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    bn = nn.BatchNorm1d(4).to(DT)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(4, generator=g, dtype=DT))
        bn.running_var.copy_(torch.rand(4, generator=g, dtype=DT) + 0.5)
        bn.weight.copy_(torch.randn(4, generator=g, dtype=DT))
        bn.bias.copy_(torch.randn(4, generator=g, dtype=DT))
    return bn


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "batchnorm"])
def test_pass_rule_passes_relevance_unchanged(name):
    g = torch.Generator().manual_seed(5)
    linear = nn.Linear(6, 4).to(DT)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(4, 6, generator=g, dtype=DT))
        linear.bias.copy_(torch.randn(4, generator=g, dtype=DT))
    model = nn.Sequential(linear, _shape_preserving(name, g)).eval()
    x = torch.randn(BATCH, 6, generator=g, dtype=DT)
    h = linear(x).detach()
    assert h.abs().min() > 1e-3 and model(x).abs().min() > 1e-3
    Rout = torch.randn(BATCH, 4, generator=g, dtype=DT)
    e = lrp.explain(model, x, Composite(LayerMap(0, R.Zero()), LayerMap("1", R.Pass())),
                    target=lambda out: Rout.clone(), audit="off", record=["0"])
    assert_agree(e.layer_relevance["0"], Rout, "relevance at the Pass module's input")
    L = Dense(linear.weight.detach(), linear.bias.detach(), torch.ones(4, 6, dtype=DT))
    assert_agree(e.relevance, oracle_basic(L, x, Rout))


@pytest.mark.parametrize("eps", [1e-6, 0.1])
@pytest.mark.parametrize("kind", ["nonneg", "mixed"])
def test_norm_on_avgpool(eps, kind):
    g = torch.Generator().manual_seed(9)
    in_shape = (2, 4, 6)
    x = draw_input(in_shape, kind, g)
    if kind == "nonneg":
        x = x + 0.1                       # a window of zeros would make z = 0
    Rout = torch.randn(BATCH, 2 * 2 * 3, generator=g, dtype=DT)
    model = nn.Sequential(nn.AvgPool2d(2), nn.Flatten()).eval()
    assert model(x).abs().min() > 1e-3
    e = library_relevance(model, x, R.Norm(eps), Rout)
    L = Dense(avgpool2d_matrix(in_shape, 2), None, None)
    assert_agree(e.relevance.flatten(1), oracle_basic(L, x.flatten(1), Rout, eps=eps))


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_rule(affine):
    g = torch.Generator().manual_seed(13)
    n = 6
    ln = nn.LayerNorm(n, eps=1e-3, elementwise_affine=affine).to(DT)
    if affine:
        with torch.no_grad():
            ln.weight.copy_(torch.randn(n, generator=g, dtype=DT))
            ln.bias.copy_(torch.randn(n, generator=g, dtype=DT))
    x = 2.0 * torch.randn(BATCH, n, generator=g, dtype=DT) + 0.5
    Rout = torch.randn(BATCH, n, generator=g, dtype=DT)
    model = nn.Sequential(ln).eval()
    assert model(x).abs().min() > 1e-3
    e = library_relevance(model, x, R.LayerNormRule(), Rout)

    w = torch.ones(n, dtype=DT) if not affine else ln.weight.detach()
    b = torch.zeros(n, dtype=DT) if not affine else ln.bias.detach()
    expected = torch.empty_like(x)
    centring = torch.eye(n, dtype=DT) - 1.0 / n
    for k in range(BATCH):
        std = torch.sqrt(((x[k] - x[k].mean()) ** 2).mean() + 1e-3)
        M = w[:, None] * centring / std                   # y = M x + b, std constant
        C = M * x[k][None, :]
        z = C.sum(1) + b
        torch.testing.assert_close(z, model(x[k:k + 1]).detach()[0], rtol=1e-12, atol=1e-12)
        expected[k] = (C / z[:, None] * Rout[k][:, None]).sum(0)
    assert_agree(e.relevance, expected)
