"""Op rules (lrp.ops) against their formulas written out, in float64.

Each model below calls its non-linearity as a function inside ``forward``; the
relevance ``lrp.explain`` returns is compared with the rule computed by hand from
the layers' weights (bias-free layers, LRP-0 elsewhere), or with the same model
written with modules whose module rules are already checked elsewhere.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrp
from lrp import ops
from lrp import rules as R
from lrp.composites import Composite, GlobalTypeMap, OpMap

DT = torch.float64


def zero_linear() -> GlobalTypeMap:
    return GlobalTypeMap([(nn.Linear, R.Zero())])


def composite(*maps) -> Composite:
    return Composite(zero_linear(), *maps)


def lin(n_in, n_out, seed):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=False).to(DT)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=g, dtype=DT))
    return layer


def lrp0(a, w, r_out):
    """LRP-0 through ``z = w a`` (rows: samples): ``R_a = a * (w^T (R_out / z))``."""
    z = a @ w.T
    return a * ((r_out / z) @ w)


class Product(nn.Module):
    """``y = w3 (fa(x) * fb(x))``: a product of two activations."""

    def __init__(self, broadcast=False):
        super().__init__()
        self.fa, self.fb, self.out = lin(4, 5, 1), lin(4, 1 if broadcast else 5, 2), lin(5, 1, 3)

    def forward(self, x):
        return self.out(self.fa(x) * self.fb(x))


def test_uniform_product_gives_each_operand_half():
    model = Product()
    x = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(0))
    e = lrp.explain(model, x, composite(OpMap({"product": ops.Uniform()})), target=0, audit="strict")
    with torch.no_grad():
        a, b = model.fa(x), model.fb(x)
        r_p = (a * b) * model.out.weight  # relevance of each product entry (target 0)
    expected = lrp0(x, model.fa.weight, r_p / 2) + lrp0(x, model.fb.weight, r_p / 2)
    torch.testing.assert_close(e.relevance, expected)
    torch.testing.assert_close(e.relevance.sum(1), e.output[:, 0])  # conserved


def test_gate_gives_everything_to_the_gated_operand():
    model = Product(broadcast=True)
    x = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(0))
    e = lrp.explain(model, x, composite(OpMap({"product": ops.Gate()})), target=0, audit="strict")
    with torch.no_grad():
        a, b = model.fa(x), model.fb(x)
        r_p = (a * b) * model.out.weight
    torch.testing.assert_close(e.relevance, lrp0(x, model.fa.weight, r_p))


class Activation(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.fc, self.out = fn, lin(4, 5, 1), lin(5, 1, 2)

    def forward(self, x):
        return self.out(self.fn(self.fc(x)))


@pytest.mark.parametrize("fn", [torch.sigmoid, torch.tanh, F.gelu, F.silu, F.softplus,
                                lambda h: F.elu(h, 0.5), lambda h: F.hardtanh(h, -0.5, 0.5),
                                lambda h: h.sigmoid(), lambda h: F.silu(h.clone(), inplace=True)],
                         ids=["sigmoid", "tanh", "gelu", "silu", "softplus", "elu", "hardtanh",
                              "method", "inplace"])
def test_identity_rule_on_functional_activation(fn):
    """Identity rule: relevance at the activation's input equals that at its output."""
    model = Activation(fn)
    x = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(0))
    e = lrp.explain(model, x, composite(OpMap({"activation": ops.Identity(0.0)})), target=0,
                    audit="strict")
    with torch.no_grad():
        h = model.fc(x)
        r_h = fn(h.clone()) * model.out.weight  # relevance at the activation's output
    torch.testing.assert_close(e.relevance, lrp0(x, model.fc.weight, r_h))


@pytest.mark.parametrize("fn, kwargs", [
    (F.silu, {}), (F.gelu, {}), (F.gelu, {"approximate": "none"}), (nn.SiLU(), {}),
    (nn.GELU(), {})], ids=["silu", "gelu", "gelu-none", "SiLU", "GELU"])
def test_identity_ratio_closed_forms_are_the_division(fn, kwargs):
    """The closed forms of f(x) / x (sigmoid, normal CDF) against the division itself."""
    x = torch.linspace(-6, 6, 1001, dtype=DT)
    x = x[x != 0]
    ratio = ops.identity_ratio(fn, (), kwargs)
    torch.testing.assert_close(ratio(x), fn(x, **kwargs) / x, rtol=1e-12, atol=1e-15)
    assert ratio(torch.zeros(1, dtype=DT)).item() == 0.5  # the limit f'(0), not 0 / eps


@pytest.mark.parametrize("overwritten", [False, True])
def test_identity_ratio_evaluated_in_the_backward_unless_overwritten(overwritten):
    """The closed-form ratio runs in the backward pass from the saved input (none in
    the forward, none without a backward); for an overwritten input, in the forward.
    Either way the gradient is the division f(x) / x times the incoming gradient."""
    calls = []

    def ratio(t):
        calls.append(1)
        return torch.sigmoid(t)
    x = torch.randn(4, 6, dtype=DT, generator=torch.Generator().manual_seed(3)).requires_grad_()
    h = x * 1.0
    out = ops.identity_output(h, F.silu(h), 0.0, ratio=ratio, overwritten=overwritten)
    assert len(calls) == (1 if overwritten else 0)
    grad_out = torch.randn(4, 6, dtype=DT, generator=torch.Generator().manual_seed(4))
    (g,) = torch.autograd.grad(out, x, grad_out)
    assert len(calls) == 1
    with torch.no_grad():
        torch.testing.assert_close(g, F.silu(x) / x * grad_out, rtol=1e-12, atol=1e-15)


def test_identity_ratio_only_where_exact():
    """No closed form for the tanh approximation of GELU (given by keyword or position)
    or for activations without one: those divide."""
    assert ops.identity_ratio(F.gelu, (), {"approximate": "tanh"}) is None
    assert ops.identity_ratio(F.gelu, (torch.ones(1), "tanh"), {}) is None
    assert ops.identity_ratio(nn.GELU(approximate="tanh")) is None
    assert ops.identity_ratio(torch.tanh) is None and ops.identity_ratio(nn.Sigmoid()) is None


def test_hugging_face_activation_classes_get_their_closed_forms():
    from transformers import activations  # the test extra installs it
    x = torch.linspace(-4, 4, 9, dtype=DT) + 0.05
    for name in ("SiLUActivation", "GELUActivation"):
        module = getattr(activations, name)()
        torch.testing.assert_close(ops.identity_ratio(module)(x), module(x) / x)
    assert ops.identity_ratio(activations.NewGELUActivation()) is None


def test_activation_module_and_function_agree():
    functional = Activation(torch.tanh)
    modular = nn.Sequential(functional.fc, nn.Tanh(), functional.out)
    x = torch.randn(3, 4, dtype=DT)
    comp = Composite(zero_linear(), GlobalTypeMap([(nn.Tanh, R.Pass(0.0))]),
                     OpMap({"activation": ops.Identity(0.0)}))
    torch.testing.assert_close(lrp.explain(functional, x, comp, target=0).relevance,
                               lrp.explain(modular, x, comp, target=0).relevance)


class Softmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = lin(4, 5, 1), lin(5, 2, 2)

    def forward(self, x):
        return self.out(torch.softmax(self.fc(x), dim=-1))


def test_softmax_attnlrp_rule():
    """AttnLRP Prop. 3.1: R_x = x (R_s - s sum(R_s))."""
    model = Softmax()
    x = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(0))
    e = lrp.explain(model, x, composite(OpMap({"softmax": ops.Gradient()})), target=1,
                    audit="strict")
    with torch.no_grad():
        h = model.fc(x)
        s = torch.softmax(h, -1)
        r_s = s * model.out.weight[1]
        r_h = h * (r_s - s * r_s.sum(-1, keepdim=True))
    torch.testing.assert_close(e.relevance, lrp0(x, model.fc.weight, r_h))


def test_constant_softmax_passes_no_relevance():
    model = Softmax()
    x = torch.randn(3, 4, dtype=DT)
    e = lrp.explain(model, x, composite(OpMap({"softmax": ops.Constant()})), target=1)
    assert torch.count_nonzero(e.relevance) == 0


class LayerNormFn(nn.Module):
    """``F.layer_norm`` in a forward, then a bias-free linear layer."""

    def __init__(self, rms=False):
        super().__init__()
        self.fc, self.out, self.rms = lin(4, 6, 1), lin(6, 1, 2), rms
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 6, dtype=DT))

    def forward(self, x):
        h = self.fc(x)
        if self.rms:  # written out, as in Hugging Face's LlamaRMSNorm
            n = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        else:
            n = F.layer_norm(h, (6,), self.weight, None, 1e-5)
        return self.out(n * self.weight if self.rms else n)


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rsqrt_rms"])
def test_normalization_statistic_constant(rms):
    """With the statistic constant the norm is linear: R_h = h (C^T (w g)) / sigma with
    C the centring (the identity for RMS), and relevance is conserved (no bias)."""
    model = LayerNormFn(rms)
    x = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(0))
    comp = composite(OpMap({"normalization": ops.Normalizer(), "statistic": ops.Constant()}))
    e = lrp.explain(model, x, comp, target=0, audit="strict")
    with torch.no_grad():
        h = model.fc(x)
        n = h.shape[-1]
        if rms:
            sigma = torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
            center = torch.eye(n, dtype=DT)
        else:
            sigma = torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
            center = torch.eye(n, dtype=DT) - 1.0 / n
        g = model.weight * model.out.weight[0]  # gradient of the output at the norm's output
        r_h = h * ((g @ center.T) / sigma)
    torch.testing.assert_close(e.relevance, lrp0(x, model.fc.weight, r_h))
    torch.testing.assert_close(e.relevance.sum(1), e.output[:, 0])


def test_group_norm_statistic_constant():
    gn = nn.GroupNorm(2, 4).to(DT)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False).to(DT), gn, nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 2, bias=False).to(DT))
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.zero_()
    x = torch.randn(2, 3, 6, 6, dtype=DT)
    e = lrp.explain(model, x, Composite(GlobalTypeMap([((nn.Conv2d, nn.Linear), R.Zero()),
                                                       (nn.GroupNorm, R.LayerNormRule())])),
                    target=0, audit="strict")
    # written out: the group statistic is a constant, so the norm is linear
    with torch.no_grad():
        h = model[0](x)
        hg = h.reshape(2, 2, -1)
        sigma = torch.sqrt(hg.var(-1, unbiased=False, keepdim=True) + gn.eps)
    hl = h.detach().clone().requires_grad_(True)
    grouped = hl.reshape(2, 2, -1)
    normed = ((grouped - grouped.mean(-1, keepdim=True)) / sigma).reshape(h.shape)
    y = model[3](model[2](normed * gn.weight.detach()[None, :, None, None]))
    (g_h,) = torch.autograd.grad(y[:, 0].sum(), hl)
    r_h = h * g_h
    xl = x.clone().requires_grad_(True)
    (g_x,) = torch.autograd.grad((model[0](xl) * (r_h / h)).sum(), xl)
    torch.testing.assert_close(e.relevance, x * g_x)


def test_channel_layer_norm_normalizes_its_own_axis():
    """torchvision's LayerNorm2d (ConvNeXt) normalizes channels via a permute; the rule
    must match the same model written with permute + nn.LayerNorm, also when the width
    equals the number of channels."""
    from torchvision.models.convnext import LayerNorm2d
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).to(DT)
    ln2d = LayerNorm2d(4).to(DT)
    head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).to(DT)
    with torch.no_grad():
        ln2d.weight.uniform_(0.5, 1.5)
        ln2d.bias.uniform_(-0.1, 0.1)

    class Permuted(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(4).to(DT)
            self.ln.load_state_dict(ln2d.state_dict())

        def forward(self, x):
            return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    a = nn.Sequential(conv, ln2d, head)
    b = nn.Sequential(conv, Permuted(), head)
    x = torch.randn(2, 3, 4, 4, dtype=DT)  # width 4 == channels 4
    comp = lrp.composites.EpsilonPlus()
    ea, eb = lrp.explain(a, x, comp, target=0), lrp.explain(b, x, comp, target=0)
    torch.testing.assert_close(ea.relevance, eb.relevance)


class Relu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = lin(4, 5, 1), lin(5, 2, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


def test_guided_backprop_on_functional_relu():
    functional = Relu()
    modular = nn.Sequential(functional.fc, nn.ReLU(), functional.out)
    x = torch.randn(5, 4, dtype=DT)
    comp = lrp.composites.GuidedBackprop()
    got = lrp.explain(functional, x, comp, target=1).relevance
    torch.testing.assert_close(got, lrp.explain(modular, x, comp, target=1).relevance)
    # written out: positive gradients only, where the ReLU's input is positive; the
    # first layer passes the gradient on unchanged
    with torch.no_grad():
        h = functional.fc(x)
        g = (functional.out.weight[1] * (h > 0)).clamp(min=0)
    torch.testing.assert_close(got, g @ functional.fc.weight)


def test_op_map_within_restricts_to_a_module():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Activation(torch.sigmoid), Activation(torch.sigmoid)

        def forward(self, x):
            return self.a(x) + self.b(x)

    model = Two()
    x = torch.randn(3, 4, dtype=DT)
    only_a = composite(OpMap({"activation": ops.Identity(0.0)}, within="a"))
    e = lrp.explain(model, x, only_a, target=0, audit="warn")
    assert [str(f) for f in e.audit.uncovered] == ["Sigmoid in b"]
    reference_a = lrp.explain(model.a, x, composite(OpMap({"activation": ops.Identity(0.0)})),
                              target=0).relevance
    grad_b = lrp.explain(model.b, x, composite(), target=0).relevance
    torch.testing.assert_close(e.relevance, reference_a + grad_b)


def test_ops_inside_ruled_modules_are_left_to_the_module_rule():
    class Gated(nn.Module):  # a squeeze-excitation-like block, ruled as a whole
        def forward(self, x):
            return x * torch.sigmoid(x.mean(-1, keepdim=True))

    model = nn.Sequential(lin(4, 5, 1), Gated(), lin(5, 1, 2))
    x = torch.randn(3, 4, dtype=DT)
    comp = Composite(zero_linear(), GlobalTypeMap([(Gated, R.Pass(0.0))]),
                     OpMap({"product": ops.Uniform(), "activation": ops.Identity()}))
    e = lrp.explain(model, x, comp, target=0, audit="strict")
    with torch.no_grad():
        r_out = model(x) * 1.0  # one output: its relevance is the logit
        g = model[1](model[0](x))
        r_g = g * model[2].weight[0]  # Pass: relevance at the gate's input equals its output's
    torch.testing.assert_close(e.relevance, lrp0(x, model[0].weight, r_g))
    torch.testing.assert_close(e.relevance.sum(1), r_out[:, 0])


def test_op_map_checks_its_arguments():
    with pytest.raises(ValueError, match="unknown op kind"):
        OpMap({"activations": ops.Identity()})
    with pytest.raises(TypeError, match="op rules"):
        OpMap({"activation": R.Pass()})
    with pytest.raises(ValueError, match="intercepts"):
        OpMap({torch.exp: ops.Identity()})
