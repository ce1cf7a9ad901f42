"""DeepLift and DeepLiftShap against oracles written out here: summation-to-delta
with the model's own outputs, explicit per-layer multiplier chains (Rescale), the
paper's RevealCancel formulas on small networks, LRP-0 / gradient x input where
DeepLift reduces to them, and explicit loops over background references."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrp import explain
from lrp.audit import CoverageError
from lrp.composites import Composite, GlobalTypeMap, Linear
from lrp.deeplift import deeplift, deeplift_shap
from lrp.demo import demo_inputs, load_demo_model
from lrp.rules import Zero

DT = torch.float64


def seeded(module: nn.Module, seed: int = 0, dtype=DT) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.5)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return module.to(dtype).eval()


def randn(*shape, seed=10, dtype=DT):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def delta_f(model, x, ref, t):
    """f_t(x) - f_t(x_ref), straight from the model."""
    with torch.no_grad():
        out, out_ref = model(x), model(ref.expand_as(x) if ref.shape[0] == 1 else ref)
    return (out - out_ref).gather(1, t[:, None])[:, 0]


def assert_sums_to_delta(model, x, ref, rule, rtol=1e-4):
    e = deeplift(model, x, reference=ref, rule=rule)
    want = delta_f(model, x, ref, e.target)
    got = e.relevance.flatten(1).sum(1)
    assert torch.isfinite(e.relevance).all()
    assert ((got - want).abs() <= rtol * want.abs().clamp(min=1e-3)).all(), (got, want)
    torch.testing.assert_close(e.convergence, got - want, rtol=0, atol=1e-6 * want.abs().max())
    assert no_hooks(model)
    return e


class Residual(nn.Module):
    """Conv-BN-activation with a functional residual sum, average and max pooling."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.act = act
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)))
        h = self.act(self.bn2(self.conv2(h)) + h)  # one module called twice
        return self.fc(torch.flatten(self.avg(self.pool(h)), 1))


ACTIVATIONS = [nn.ReLU(inplace=True), nn.LeakyReLU(0.1), nn.ReLU6(), nn.Hardtanh(-0.5, 0.5),
               nn.Sigmoid(), nn.Tanh(), nn.Softplus(), nn.GELU(), nn.SiLU(), nn.ELU()]


# --------------------------------------------------------------------------- summation-to-delta

@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
def test_summation_to_delta_trained_cnn_with_max_pooling_and_batch_norm(rule):
    model = load_demo_model()  # Conv-BN-ReLU-MaxPool x3, Linear; trained on digits
    assert any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x, _ = demo_inputs(6)
    assert_sums_to_delta(model, x, torch.zeros_like(x[:1]), rule)
    assert_sums_to_delta(model, x, demo_inputs(12)[0][6:], rule)  # one per sample


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
def test_summation_to_delta_each_activation(act, rule):
    model = seeded(Residual(act), 1)
    x = randn(3, 2, 8, 8)
    assert_sums_to_delta(model, x, randn(1, 2, 8, 8, seed=11), rule, rtol=1e-8)
    assert getattr(act, "inplace", False) == isinstance(act, nn.ReLU)  # restored


@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
def test_summation_to_delta_resnet18(rule):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    assert_sums_to_delta(model, x, torch.zeros(1, 3, 64, 64), rule)
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


class Layers(nn.Module):
    """Linear on (batch, tokens, features), Conv1d, ConvTranspose2d, AdaptiveMaxPool1d."""

    def __init__(self):
        super().__init__()
        self.dense, self.act = nn.Linear(4, 6), nn.Tanh()
        self.conv, self.pool = nn.Conv1d(5, 3, 3), nn.AdaptiveMaxPool1d(2)
        self.up, self.fc = nn.ConvTranspose2d(1, 2, 3), nn.Linear(3 * 2 + 2 * 5 * 5, 2)

    def forward(self, x):
        h = self.pool(self.act(self.conv(self.act(self.dense(x)))))
        u = self.act(self.up(x[:, None, :3, :3]))
        return self.fc(torch.cat([h.flatten(1), u.flatten(1)], 1))


@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
def test_summation_to_delta_other_layer_types(rule):
    assert_sums_to_delta(seeded(Layers(), 2), randn(3, 5, 4), randn(1, 5, 4, seed=3), rule,
                         rtol=1e-8)


def test_resnet50_runs():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    assert_sums_to_delta(model, x, torch.zeros_like(x), "rescale")


# --------------------------------------------------------------------------- Rescale oracle

def derivative(fn, t):
    with torch.enable_grad():
        t = t.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(t).sum(), t)
    return g


def rescale_multiplier(fn, z, z0):
    """m = Δy / Δz, the derivative at the midpoint where Δz vanishes."""
    dz, dy = z - z0, fn(z) - fn(z0)
    return torch.where(dz.abs() > 1e-12, dy / torch.where(dz == 0, 1.0, dz),
                       derivative(fn, (z + z0) / 2))


def conv_matrix(conv, shape):
    """The (bias-free) convolution as a matrix (out features x in features)."""
    n = int(torch.tensor(shape).prod())
    basis = torch.eye(n, dtype=DT).reshape(n, *shape)
    out = F.conv2d(basis, conv.weight.detach(), None, conv.stride, conv.padding)
    return out.reshape(n, -1).T, out.shape[1:]


def maxpool_matrix(a, a0, k):
    """Two-winner multipliers of a k x k max pooling of one sample (C, H, W)."""
    c, h, w = a.shape
    out = torch.zeros(c * (h // k) * (w // k), c * h * w, dtype=DT)
    row = 0
    for ch in range(c):
        for i in range(0, h - h % k, k):
            for j in range(0, w - w % k, k):
                cells = [(ch * h * w + (i + u) * w + (j + v)) for u in range(k) for v in range(k)]
                vals = [a.flatten()[q].item() for q in cells]
                refs = [a0.flatten()[q].item() for q in cells]
                ia, ib = cells[vals.index(max(vals))], cells[refs.index(max(refs))]
                dy = max(vals) - max(refs)
                dxa = a.flatten()[ia].item() - a0.flatten()[ia].item()
                dxb = a.flatten()[ib].item() - a0.flatten()[ib].item()
                lam = 1.0 if dxa == dxb else (dy - dxb) / (dxa - dxb)
                out[row, ia] += lam
                out[row, ib] += 1 - lam
                row += 1
    return out


def rescale_oracle(layers, x, ref, t):
    """DeepLift Rescale by hand: forward through the layers, multiplier matrices per
    layer, chained backwards.  ``layers``: Linear, Conv2d, MaxPool2d, Flatten or an
    element-wise activation; one sample at a time."""
    result = []
    for xs, rs, ts in zip(x, ref.expand_as(x), t):
        a, a0 = xs, rs
        mats = []
        for layer in layers:
            if isinstance(layer, nn.Linear):
                mats.append(layer.weight.detach())
                a, a0 = layer(a), layer(a0)
            elif isinstance(layer, nn.Conv2d):
                mat, _ = conv_matrix(layer, a.shape)
                mats.append(mat)
                a, a0 = layer(a[None])[0], layer(a0[None])[0]
            elif isinstance(layer, nn.MaxPool2d):
                mats.append(maxpool_matrix(a, a0, layer.kernel_size))
                a, a0 = layer(a[None])[0], layer(a0[None])[0]
            elif isinstance(layer, nn.Flatten):
                a, a0 = a.flatten(), a0.flatten()
            else:
                mats.append(torch.diag(rescale_multiplier(layer, a, a0).flatten()))
                a, a0 = layer(a), layer(a0)
        chain = torch.zeros(1, a.numel(), dtype=DT)
        chain[0, ts] = 1.0
        for mat in reversed(mats):
            chain = chain @ mat
        result.append((xs - rs) * chain.reshape(xs.shape))
    return torch.stack(result)


@torch.no_grad()
def test_rescale_equals_explicit_multipliers_mlp():
    layers = [nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 6),
              nn.Softplus(), nn.Linear(6, 3)]
    model = seeded(nn.Sequential(*layers), 3)
    x, ref = randn(4, 5), randn(1, 5, seed=4)
    with torch.enable_grad():
        e = deeplift(model, x, reference=ref)
    torch.testing.assert_close(e.relevance, rescale_oracle(layers, x, ref, e.target),
                               rtol=1e-9, atol=1e-11)


@torch.no_grad()
def test_rescale_equals_explicit_multipliers_cnn():
    layers = [nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
              nn.Sigmoid(), nn.Flatten(), nn.Linear(4, 3)]
    model = seeded(nn.Sequential(*layers), 5)
    x, ref = randn(3, 1, 6, 6), randn(3, 1, 6, 6, seed=6)  # one reference per sample
    with torch.enable_grad():
        e = deeplift(model, x, target=[0, 1, 2], reference=ref)
    torch.testing.assert_close(e.relevance, rescale_oracle(layers, x, ref, e.target),
                               rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------- RevealCancel

def reveal_cancel_oracle(hidden, v, f, df, x, ref):
    """The paper's RevealCancel for ``o = v . f(W_L ... f(W_1 x + b_1) ... + b_L)``,
    written out per unit: ``hidden`` is a list of (W, b) as nested lists, ``df`` the
    derivative of ``f``."""
    a, a0 = list(x), list(ref)
    saved = []
    for w, b in hidden:
        dx = [ai - ri for ai, ri in zip(a, a0)]
        m_pos, m_neg, a_next, a0_next = [], [], [], []
        for row, bj in zip(w, b):
            z0 = sum(wi * ri for wi, ri in zip(row, a0)) + bj
            z = sum(wi * ai for wi, ai in zip(row, a)) + bj
            # the positive and negative terms w_i Δx_i of the layer input's difference
            dz_pos = sum(wi * d for wi, d in zip(row, dx) if wi * d > 0)
            dz_neg = sum(wi * d for wi, d in zip(row, dx) if wi * d < 0)
            dy_pos = 0.5 * (f(z0 + dz_pos) - f(z0)) + 0.5 * (f(z) - f(z0 + dz_neg))
            dy_neg = 0.5 * (f(z0 + dz_neg) - f(z0)) + 0.5 * (f(z) - f(z0 + dz_pos))
            # where a part is zero, the limit of its secant
            m_pos.append(dy_pos / dz_pos if dz_pos else 0.5 * (df(z0) + df(z)))
            m_neg.append(dy_neg / dz_neg if dz_neg else 0.5 * (df(z0) + df(z)))
            a_next.append(f(z))
            a0_next.append(f(z0))
        saved.append((w, dx, m_pos, m_neg))
        a, a0 = a_next, a0_next
    def multiplier(wi, d, mp, mn):
        # Δx_i feeds Δz+ where w_i Δx_i > 0, Δz- where it is < 0, and both with weight
        # 1/2 where Δx_i = 0 (its positive and negative parts may cancel)
        return wi * (mp if wi * d > 0 else mn if wi * d < 0 else 0.5 * (mp + mn))

    grad = list(v)  # multipliers of the output to each unit's total difference
    for w, dx, m_pos, m_neg in reversed(saved):
        grad = [sum(g * multiplier(row[i], dx[i], mp, mn)
                    for g, row, mp, mn in zip(grad, w, m_pos, m_neg)) for i in range(len(dx))]
    return [d * g for d, g in zip(saved[0][1], grad)]


def mlp(hidden, v, act):
    layers = []
    for w, b in hidden:
        linear = nn.Linear(len(w[0]), len(w))
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(w))
            linear.bias.copy_(torch.tensor(b))
        layers += [linear, act]
    out = nn.Linear(len(v), 1, bias=False)
    with torch.no_grad():
        out.weight.copy_(torch.tensor([v]))
    return nn.Sequential(*layers, out).to(DT).eval()


def relu(z):
    return max(z, 0.0)


def relu_prime(z):
    return 1.0 if z > 0 else 0.0


def tanh(z):
    return torch.tanh(torch.tensor(z, dtype=DT)).item()


def tanh_prime(z):
    return 1.0 - tanh(z) ** 2


def test_reveal_cancel_min_example_from_the_paper():
    # o = i1 - relu(i1 - i2) = min(i1, i2) at (3, 4), reference 0: Rescale gives all of
    # min = 3 to i1, RevealCancel reveals the cancelled halves: 1.5 each.
    hidden, v = [([[1.0, -1.0], [1.0, 0.0]], [0.0, 0.0])], [-1.0, 1.0]
    model = mlp(hidden, v, nn.ReLU())
    x = torch.tensor([[3.0, 4.0]], dtype=DT)
    want = reveal_cancel_oracle(hidden, v, relu, relu_prime, [3.0, 4.0], [0.0, 0.0])
    assert want == pytest.approx([1.5, 1.5])
    got = deeplift(model, x, 0, rule="reveal_cancel").relevance
    torch.testing.assert_close(got, torch.tensor([want], dtype=DT))
    rescale = deeplift(model, x, 0).relevance
    torch.testing.assert_close(rescale, torch.tensor([[3.0, 0.0]], dtype=DT))


@pytest.mark.parametrize("act, f, df", [(nn.ReLU(), relu, relu_prime),
                                        (nn.Tanh(), tanh, tanh_prime)], ids=["relu", "tanh"])
@pytest.mark.parametrize("depth", [1, 3])
def test_reveal_cancel_hand_computed(act, f, df, depth):
    gen = torch.Generator().manual_seed(depth)
    sizes = [3] + [4] * depth
    hidden = [((torch.randn(o, i, generator=gen) * 1.5).tolist(),
               (torch.randn(o, generator=gen) * 0.5).tolist())
              for i, o in zip(sizes[:-1], sizes[1:])]
    v = torch.randn(sizes[-1], generator=gen).tolist()
    x, ref = [1.5, 0.5, -0.7], [0.1, -0.4, 0.3]
    want = reveal_cancel_oracle(hidden, v, f, df, x, ref)
    e = deeplift(mlp(hidden, v, act), torch.tensor([x], dtype=DT), 0,
                 reference=torch.tensor([ref], dtype=DT), rule="reveal_cancel")
    torch.testing.assert_close(e.relevance, torch.tensor([want], dtype=DT))
    assert abs(e.convergence.item()) < 1e-12


# --------------------------------------------------------------------------- identities

def test_bias_free_relu_network_zero_reference_is_lrp0_and_gradient_x_input():
    model = seeded(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)), 7)
    x = randn(3, 2, 8, 8)
    e = deeplift(model, x)
    lrp0 = explain(model, x, Composite(GlobalTypeMap([(Linear, Zero())])), target=e.target)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).gather(1, e.target[:, None]).sum(), xg)
    torch.testing.assert_close(e.relevance, lrp0.relevance, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(e.relevance, x * grad, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("dtype, scale, rtol", [(DT, 1e-9, 1e-6), (torch.float32, 1e-6, 1e-3)])
def test_near_zero_differences_give_gradient_times_delta(dtype, scale, rtol):
    model = seeded(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Sigmoid(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(3 * 3 * 3, 4), nn.GELU(),
                                 nn.Linear(4, 2)), 8, dtype)
    x = randn(2, 1, 6, 6, dtype=dtype)
    ref = x + scale * randn(2, 1, 6, 6, seed=12, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    for rule in ("rescale", "reveal_cancel"):
        e = deeplift(model, x, 1, reference=ref, rule=rule)
        assert torch.isfinite(e.relevance).all()
        torch.testing.assert_close(e.relevance, grad * (x - ref), rtol=rtol,
                                   atol=rtol * float((grad * (x - ref)).abs().max()))
        same = deeplift(model, x, 1, reference=x, rule=rule)
        assert torch.isfinite(same.relevance).all() and not same.relevance.any()


# --------------------------------------------------------------------------- targets, shap

def test_several_targets_share_one_forward():
    model = seeded(Residual(nn.Tanh()), 2)
    x = randn(3, 2, 8, 8)
    t = torch.tensor([[0, 2], [1, 1], [2, 0]])
    e = deeplift(model, x, t)
    assert e.relevance.shape == (3, 2, 2, 8, 8) and e.convergence.shape == (3, 2)
    for k in range(2):
        single = deeplift(model, x, t[:, k])
        torch.testing.assert_close(e.relevance[:, k], single.relevance)
        torch.testing.assert_close(e.convergence[:, k], single.convergence)
    assert (deeplift(model, x).target == model(x).argmax(1)).all()
    torch.testing.assert_close(deeplift(model, x, 1).relevance, deeplift(model, x, [1, 1, 1]).relevance)


@pytest.mark.parametrize("rule, batch_size", [("rescale", 7), ("rescale", 2),
                                              ("reveal_cancel", 64)])
def test_deeplift_shap_is_the_mean_over_background(rule, batch_size):
    model = seeded(Residual(nn.ReLU()), 3)
    x, background = randn(3, 2, 8, 8), randn(5, 2, 8, 8, seed=13)
    e = deeplift_shap(model, x, background, [0, 2, 1], rule=rule, batch_size=batch_size,
                      progress=False)
    runs = [deeplift(model, x, [0, 2, 1], reference=background[j:j + 1], rule=rule)
            for j in range(5)]
    torch.testing.assert_close(e.relevance, sum(r.relevance for r in runs) / 5)
    with torch.no_grad():
        want = (model(x) - model(background).mean(0)).gather(1, e.target[:, None])[:, 0]
    torch.testing.assert_close(e.convergence, e.relevance.flatten(1).sum(1) - want)
    assert e.convergence.abs().max() < 1e-10
    assert no_hooks(model)


# --------------------------------------------------------------------------- errors, audit

class Functional(nn.Module):
    """Non-linearities outside modules (and a constant added between modules)."""

    def __init__(self, shift=0.0):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)
        self.shift = shift

    def forward(self, x):
        h = self.act(self.fc1(x) + self.shift)
        return self.fc2(torch.relu(h - 0.5) if not self.shift else h)


def test_errors_leave_nothing_attached():
    model = seeded(Functional(), 4)
    x = randn(2, 4)
    cases = [
        (ValueError, dict(reference=randn(3, 4))),               # reference shape
        (ValueError, dict(reference=torch.full((1, 4), float("nan"), dtype=DT))),
        (ValueError, dict(target=3)),                            # out of range
        (ValueError, dict(target=[0, 1, 2])),                    # one too many
        (TypeError, dict(target=lambda out: out)),
        (ValueError, dict(rule="rescale_plus")),
    ]
    for error, kwargs in cases + [(ValueError, dict(audit="loud"))]:
        with pytest.raises(error):
            deeplift(model, x, **{"audit": "off", **kwargs})
        assert no_hooks(model) and model.act.inplace
    with pytest.raises(ValueError, match="NaN"):
        deeplift(model, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError):  # the forward fails on a wrong input shape
        deeplift(model, randn(2, 5), audit="off")
    with pytest.raises(ValueError, match="background"):
        deeplift_shap(model, x, randn(3, 5))
    shifted = seeded(Functional(shift=1.0), 4)  # a constant between modules
    with pytest.raises(ValueError, match="RevealCancel"):
        deeplift(shifted, x, rule="reveal_cancel")
    assert no_hooks(shifted) and shifted.act.inplace
    assert no_hooks(model) and model.act.inplace


class FunctionalChain(nn.Module):
    """Functional non-linearities between modules, no constants (RevealCancel's streams
    stay differences)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 5)
        self.fc3 = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.fc2(self.act(self.fc1(x))))
        return self.fc3(torch.nn.functional.relu(h, inplace=True))


@pytest.mark.parametrize("rule, build", [("rescale", Functional), ("rescale", FunctionalChain),
                                         ("reveal_cancel", FunctionalChain)])
def test_functional_nonlinearities_get_deeplift_rules(rule, build):
    """``torch.relu``, ``torch.tanh`` and an in-place ``F.relu`` called in a forward get
    the same multipliers as modules: summation-to-delta holds, nothing is reported."""
    model = seeded(build(), 4)
    x = randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = deeplift(model, x, rule=rule, audit="strict")
    assert e.audit.ok
    assert e.convergence.abs().max() < 1e-10
    assert no_hooks(model) and model.act.inplace


class Product(nn.Module):
    """A product of two activations: no DeepLift rule exists for it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(h))


def test_audit_reports_operations_without_a_rule():
    model = seeded(Product(), 4)
    x = randn(2, 4)
    with pytest.warns(UserWarning, match="Mul"):
        e = deeplift(model, x)
    assert [f.op for f in e.audit.uncovered] == ["Mul"]
    with pytest.raises(CoverageError):
        deeplift(model, x, audit="strict")
    assert no_hooks(model)
    clean = seeded(Functional(shift=1.0), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert deeplift(clean, x).audit.ok


def test_model_is_left_unchanged():
    model = seeded(Residual(nn.ReLU(inplace=True)), 6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    deeplift(model, randn(2, 2, 8, 8), rule="reveal_cancel")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert flags == [p.requires_grad for p in model.parameters()]
    assert no_hooks(model) and model.act.inplace


def test_final_softmax_is_reported_or_stripped():
    logits = seeded(nn.Sequential(nn.Linear(4, 5), nn.ELU(), nn.Linear(5, 3)), 9)
    model = nn.Sequential(*logits, nn.Softmax(dim=1))
    x, ref = randn(3, 4), randn(1, 4, seed=14)
    with pytest.warns(UserWarning, match="Softmax"):
        deeplift(model, x, 0, reference=ref)
    stripped = deeplift(model, x, 0, reference=ref, strip_softmax=True)
    torch.testing.assert_close(stripped.relevance, deeplift(logits, x, 0, reference=ref).relevance)
    assert stripped.convergence.abs().max() < 1e-12
    shap = deeplift_shap(model, x, randn(2, 4, seed=15), 0, strip_softmax=True, progress=True,
                         batch_size=3)
    assert shap.convergence.abs().max() < 1e-12 and no_hooks(model)
