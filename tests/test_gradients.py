"""The gradient family against oracles written out here: autograd loops over the
documented noise draws and quadrature nodes, closed forms on linear models, explicit
window loops for occlusion and weight-matrix products for connection weights."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrp
from lrp import gradients as G
from lrp.composites import EpsilonGammaBox, EpsilonPlus, GuidedBackprop

DT = torch.float64


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.5)
    return module.to(DT).eval()


def smooth_mlp():
    return seeded(nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Softplus(),
                                nn.Linear(6, 4)))


def relu_mlp():
    return seeded(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(),
                                nn.Linear(6, 4)), 1)


def cnn():
    return seeded(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Flatten(), nn.Linear(3 * 4 * 4, 5)), 2)


def linear_image_model():
    return seeded(nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 3)), 3)


def inputs(*shape, seed=10):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def autograd_gradient(model, x, t):
    """d f_t / dx per sample, by plain autograd (t: (batch,))."""
    z = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(z).gather(1, t[:, None]).sum(), z)
    return g


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def close(a, b, **kw):
    torch.testing.assert_close(a, b, rtol=kw.get("rtol", 1e-9), atol=kw.get("atol", 1e-11))


# --------------------------------------------------------------------------- gradient

@pytest.mark.parametrize("make", [smooth_mlp, cnn])
@pytest.mark.parametrize("target", [None, 2, [0, 1, 3]])
def test_gradient_equals_autograd(make, target):
    model = make()
    x = inputs(3, 5) if make is smooth_mlp else inputs(3, 1, 8, 8)
    e = G.gradient(model, x, target=target)
    out = model(x)
    t = out.argmax(1) if target is None else torch.as_tensor(target).expand(3)
    assert torch.equal(e.target, t)
    close(e.output, out.detach())
    close(e.relevance, autograd_gradient(model, x, t))
    close(G.gradient_x_input(model, x, target=target).relevance,
          x * autograd_gradient(model, x, t))
    assert e.convergence is None and no_hooks(model)


def test_gradient_with_lrp_composite_is_relevance_over_input():
    model, x = cnn(), inputs(3, 1, 8, 8).abs()
    reference = lrp.explain(model, x, EpsilonPlus()).relevance
    modified = G.gradient(model, x, composite=EpsilonPlus())
    close(modified.relevance * x, reference)
    close(G.gradient_x_input(model, x, composite=EpsilonPlus()).relevance, reference)
    # the rules change the gradient (otherwise the comparison above proves nothing)
    assert (modified.relevance - G.gradient(model, x).relevance).abs().max() > 1e-3
    assert modified.method == "Gradient[EpsilonPlus]"


def test_composite_with_exact_input_rule_has_no_modified_gradient():
    model, x = cnn(), inputs(2, 1, 8, 8)
    box = EpsilonGammaBox(-4.0, 4.0)
    with pytest.raises(ValueError, match="no modified gradient.*ZBox"):
        G.gradient(model, x, composite=box)
    with pytest.raises(ValueError, match="no modified gradient"):
        G.integrated_gradients(model, x, composite=box, steps=2)
    assert no_hooks(model)
    # input x gradient is defined: it is the LRP relevance, exact input rule included
    close(G.gradient_x_input(model, x, composite=box).relevance,
          lrp.explain(model, x, box).relevance)


def test_guided_backprop_composite_gives_the_guided_gradient():
    model, x = relu_mlp(), inputs(4, 5)
    e = G.gradient(model, x, composite=GuidedBackprop())
    # oracle: backward through the ReLUs passing only positive gradients where a > 0
    l1, l2, l3 = model[0], model[2], model[4]
    a1 = l1(x)
    a2 = l2(a1.clamp(min=0))
    g = l3.weight[e.target]
    g = g.clamp(min=0) * (a2 > 0)
    g = (g @ l2.weight).clamp(min=0) * (a1 > 0)
    close(e.relevance, (g @ l1.weight).detach())


def test_strip_softmax_differentiates_the_logits():
    logits = smooth_mlp()
    model = nn.Sequential(logits, nn.Softmax(dim=1)).eval()
    x = inputs(3, 5)
    t = logits(x).argmax(1)
    close(G.gradient(model, x, strip_softmax=True).relevance, autograd_gradient(logits, x, t))
    e = G.integrated_gradients(model, x, strip_softmax=True, steps=16, method="gausslegendre")
    close(e.output, logits(x).detach())
    assert e.convergence.abs().max() < 1e-6  # completeness w.r.t. the logits
    close(model(x), torch.softmax(logits(x), 1))  # the softmax is back


# --------------------------------------------------------------------------- SmoothGrad

def smoothgrad_oracle(model, x, t, n, level, seed):
    """The documented draws: copy j adds sigma * randn(x.shape) from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    flat = x.flatten(1)
    sigma = (level * (flat.max(1).values - flat.min(1).values)).view(-1, 1, *[1] * (x.dim() - 2))
    grads, products = [], []
    for _ in range(n):
        z = x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        g = autograd_gradient(model, z, t)
        grads.append(g)
        products.append(z * g)
    grads = torch.stack(grads)
    return {"mean": grads.mean(0), "x_input": torch.stack(products).mean(0),
            "squared": (grads ** 2).mean(0), "vargrad": grads.var(0, unbiased=False)}


@pytest.mark.parametrize("mode", G.SMOOTHGRAD_MODES)
def test_smoothgrad_matches_explicit_loop_over_the_same_draws(mode):
    model, x = cnn(), inputs(3, 1, 8, 8)
    e = G.smoothgrad(model, x, mode=mode, n=6, noise_level=0.2, seed=5, batch_size=4)
    oracle = smoothgrad_oracle(model, x, e.target, 6, 0.2, 5)
    close(e.relevance, oracle[mode])
    if mode != "mean":  # the noise matters
        assert (e.relevance - G.gradient(model, x).relevance).abs().max() > 1e-4


def test_smoothgrad_without_noise():
    model, x = smooth_mlp(), inputs(4, 5)
    grad = G.gradient(model, x).relevance
    close(G.smoothgrad(model, x, noise_level=0.0, n=3).relevance, grad)
    close(G.smoothgrad(model, x, mode="squared", noise_level=0.0, n=3).relevance, grad ** 2)
    close(G.smoothgrad(model, x, mode="x_input", noise_level=0.0, n=3).relevance, x * grad)
    var = G.smoothgrad(model, x, mode="vargrad", noise_level=0.0, n=5, batch_size=3).relevance
    assert var.abs().max() < 1e-14


def test_smoothgrad_over_lrp_averages_the_relevance_of_noisy_copies():
    model, x = cnn(), inputs(2, 1, 8, 8)
    composite = EpsilonPlus()
    e = G.smoothgrad(model, x, mode="x_input", n=4, noise_level=0.1, seed=3,
                     composite=composite)
    gen = torch.Generator().manual_seed(3)
    sigma = 0.1 * (x.flatten(1).max(1).values - x.flatten(1).min(1).values).view(-1, 1, 1, 1)
    copies = [x + sigma * torch.randn(x.shape, generator=gen, dtype=DT) for _ in range(4)]
    oracle = torch.stack([lrp.explain(model, z, composite, target=e.target).relevance
                          for z in copies]).mean(0)
    close(e.relevance, oracle)


def test_seed_generator_and_chunking_give_the_same_draws():
    model, x = smooth_mlp(), inputs(5, 5)
    a = G.smoothgrad(model, x, n=7, seed=11, batch_size=1000).relevance
    b = G.smoothgrad(model, x, n=7, seed=torch.Generator().manual_seed(11), batch_size=3)
    close(a, b.relevance)
    c = G.smoothgrad(model, x, n=7, seed=12).relevance
    assert (a - c).abs().max() > 1e-6


# --------------------------------------------------------------------------- IG

def test_quadrature_nodes_and_weights():
    m = 4
    for method, nodes, weights in [
        ("riemann_left", [0, .25, .5, .75], [.25] * 4),
        ("riemann_right", [.25, .5, .75, 1], [.25] * 4),
        ("riemann_middle", [.125, .375, .625, .875], [.25] * 4),
        ("riemann_trapezoid", [0, 1 / 3, 2 / 3, 1], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    ]:
        a, w = G.quadrature(method, m)
        np.testing.assert_allclose(a, nodes, atol=1e-15)
        np.testing.assert_allclose(w, weights, atol=1e-15)
    a, w = G.quadrature("gausslegendre", m)
    for power in range(2 * m):  # exact for polynomials of degree 2m - 1
        assert abs((w * a ** power).sum() - 1 / (power + 1)) < 1e-14


@pytest.mark.parametrize("method", G.IG_METHODS)
def test_ig_on_a_linear_model_is_input_difference_times_weight(method):
    model, x = linear_image_model(), inputs(3, 2, 5, 5)
    weight = model[1].weight.detach().view(3, 2, 5, 5)
    for baseline in (None, inputs(2, 5, 5, seed=1), inputs(3, 2, 5, 5, seed=2), 0.5):
        e = G.integrated_gradients(model, x, baseline=baseline, steps=3, method=method)
        ref = torch.zeros_like(x) if baseline is None else torch.as_tensor(baseline, dtype=DT)
        close(e.relevance, (x - ref) * weight[e.target])
        assert e.convergence.abs().max() < 1e-12


@pytest.mark.parametrize("method", G.IG_METHODS)
def test_ig_matches_explicit_path_integral(method):
    model, x = smooth_mlp(), inputs(3, 5)
    baseline = inputs(3, 5, seed=4)
    steps = 5
    e = G.integrated_gradients(model, x, baseline=baseline, steps=steps, method=method,
                               batch_size=4)
    i = np.arange(steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (nodes + 1) / 2, weights / 2
    elif method == "riemann_trapezoid":
        alphas = i / (steps - 1)
        weights = np.where((i == 0) | (i == steps - 1), 0.5, 1.0) / (steps - 1)
    else:
        alphas = (i + {"riemann_left": 0, "riemann_right": 1, "riemann_middle": .5}[method]) / steps
        weights = np.full(steps, 1 / steps)
    integral = sum(float(w) * autograd_gradient(model, baseline + float(a) * (x - baseline),
                                                e.target) for a, w in zip(alphas, weights))
    close(e.relevance, (x - baseline) * integral)
    out = model(x).detach().gather(1, e.target[:, None])[:, 0]
    ref = model(baseline).detach().gather(1, e.target[:, None])[:, 0]
    close(e.convergence, e.relevance.sum(1) - (out - ref))


def test_ig_completeness_error_shrinks_and_gauss_legendre_converges_faster():
    model, x = smooth_mlp(), 2 * inputs(4, 5)
    errors = {}
    for method in ("riemann_middle", "riemann_trapezoid", "gausslegendre"):
        errors[method] = [G.integrated_gradients(model, x, steps=s, method=method)
                          .convergence.abs().max().item() for s in (2, 4, 8, 16)]
        assert all(a > b for a, b in zip(errors[method], errors[method][1:])), errors
    for riemann in ("riemann_middle", "riemann_trapezoid"):
        assert errors["gausslegendre"][-1] < 1e-3 * errors[riemann][-1], errors


# --------------------------------------------------------------------------- EG

def test_expected_gradients_matches_explicit_draws():
    model, x = smooth_mlp(), inputs(3, 5)
    background = inputs(6, 5, seed=7)
    n, level = 5, 0.1
    e = G.expected_gradients(model, x, background, n=n, noise_level=level, seed=9,
                             batch_size=4)
    gen = torch.Generator().manual_seed(9)
    index = torch.randint(6, (n, 3), generator=gen)
    alpha = torch.rand((n, 3), generator=gen, dtype=DT)
    sigma = level * (x.max(1).values - x.min(1).values)[:, None]
    total = torch.zeros_like(x)
    for j in range(n):
        ref = background[index[j]]
        z = ref + alpha[j][:, None] * (x - ref) + sigma * torch.randn(x.shape, generator=gen,
                                                                      dtype=DT)
        total += (x - ref) * autograd_gradient(model, z, e.target)
    close(e.relevance, total / n)
    out = model(x).detach().gather(1, e.target[:, None])[:, 0]
    ref_out = model(background[index]).detach().gather(
        2, e.target[None, :, None].expand(n, 3, 1))[..., 0].mean(0)
    close(e.convergence, e.relevance.sum(1) - (out - ref_out))


def test_expected_gradients_on_a_linear_model():
    model, x = linear_image_model(), inputs(2, 2, 5, 5)
    background = inputs(4, 2, 5, 5, seed=8)
    e = G.expected_gradients(model, x, background, n=6, seed=0)
    index = torch.randint(4, (6, 2), generator=torch.Generator().manual_seed(0))
    weight = model[1].weight.detach().view(3, 2, 5, 5)[e.target]
    close(e.relevance, (x - background[index].mean(0)) * weight)
    assert e.convergence.abs().max() < 1e-12


# --------------------------------------------------------------------------- occlusion

def window_starts(size, window, stride):
    starts = list(range(0, size - window + 1, stride))
    return starts + ([size - window] if starts[-1] + window < size else [])


@pytest.mark.parametrize("window,stride", [((2, 2), None), ((3, 2), (1, 2)), ((1, 2, 2), 1)])
def test_occlusion_on_a_linear_model_is_the_window_contribution(window, stride):
    model, x = linear_image_model(), inputs(3, 2, 5, 5)
    fill = 0.3
    e = G.occlusion(model, x, window=window, stride=stride, fill=fill, batch_size=7)
    w = model[1].weight.detach().view(3, 2, 5, 5)[e.target]  # (batch, 2, 5, 5)
    win = (2,) * (3 - len(window)) + tuple(window)
    step = win if stride is None else (
        (stride,) * 3 if isinstance(stride, int) else (win[0],) + tuple(stride))
    total, count = torch.zeros_like(x), torch.zeros(2, 5, 5, dtype=DT)
    for c in window_starts(2, win[0], step[0]):
        for i in window_starts(5, win[1], step[1]):
            for j in window_starts(5, win[2], step[2]):
                box = (slice(c, c + win[0]), slice(i, i + win[1]), slice(j, j + win[2]))
                # contribution of the window's elements to the linear score
                drop = (w[(slice(None),) + box] * (x[(slice(None),) + box] - fill)).sum((1, 2, 3))
                total[(slice(None),) + box] += drop.view(-1, 1, 1, 1) / np.prod(win)
                count[box] += 1
    close(e.relevance, total / count)


def test_occlusion_on_a_cnn_with_a_fill_image():
    model, x = cnn(), inputs(2, 1, 8, 8)
    fill = inputs(2, 1, 8, 8, seed=3)
    e = G.occlusion(model, x, window=4, stride=2, fill=fill)
    t = e.target
    score = model(x).detach().gather(1, t[:, None])[:, 0]
    total, count = torch.zeros_like(x), torch.zeros_like(x)
    for i in range(0, 5, 2):
        for j in range(0, 5, 2):
            z = x.clone()
            z[:, :, i:i + 4, j:j + 4] = fill[:, :, i:i + 4, j:j + 4]
            drop = score - model(z).detach().gather(1, t[:, None])[:, 0]
            total[:, :, i:i + 4, j:j + 4] += drop.view(-1, 1, 1, 1) / 16
            count[:, :, i:i + 4, j:j + 4] += 1
    close(e.relevance, total / count)


# --------------------------------------------------------------------------- connection weights

def test_connection_weights_is_the_product_of_weight_matrices():
    model, x = relu_mlp(), inputs(4, 5)
    product = (model[4].weight @ model[2].weight @ model[0].weight).detach()
    e = G.connection_weights(model, x)
    close(e.relevance, product[e.target])
    close(G.connection_weights(model, x, times_input=True, target=1).relevance, product[1] * x)


class Residual(nn.Module):
    def __init__(self, functional=False):
        super().__init__()
        self.functional = functional
        self.a, self.b, self.skip = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(4, 3)
        self.act = nn.Sigmoid()

    def forward(self, x):
        h = F.relu(self.a(x)) if self.functional else self.act(self.a(x))
        return self.b(h) + self.skip(x)


def test_connection_weights_sums_over_all_paths():
    model, x = seeded(Residual()), inputs(3, 4)
    paths = (model.b.weight @ model.a.weight + model.skip.weight).detach()
    close(G.connection_weights(model, x).relevance,
          paths[model(x).argmax(1)])


def test_connection_weights_rejects_non_dense_models():
    with pytest.raises(ValueError, match="dense networks only.*Conv2d"):
        G.connection_weights(cnn(), inputs(2, 1, 8, 8))
    model = seeded(Residual(functional=True))
    with pytest.raises(ValueError, match="dense networks only.*Relu"):
        G.connection_weights(model, inputs(2, 4))
    assert no_hooks(model)


# --------------------------------------------------------------------------- targets, chunks

def run_method(name, model, x, **kw):
    background = inputs(5, *x.shape[1:], seed=6)
    calls = {
        "gradient": lambda: G.gradient(model, x, **kw),
        "gradient_x_input": lambda: G.gradient_x_input(model, x, **kw),
        "smoothgrad": lambda: G.smoothgrad(model, x, n=3, seed=1, **kw),
        "vargrad": lambda: G.smoothgrad(model, x, mode="vargrad", n=3, seed=1, **kw),
        "integrated_gradients": lambda: G.integrated_gradients(model, x, steps=4, **kw),
        "expected_gradients": lambda: G.expected_gradients(model, x, background, n=3, seed=2,
                                                           noise_level=0.1, **kw),
        "occlusion": lambda: G.occlusion(model, x, window=(2,), stride=1, **kw),
        "connection_weights": lambda: G.connection_weights(model, x, **kw),
    }
    return calls[name]()


METHODS = ["gradient", "gradient_x_input", "smoothgrad", "vargrad", "integrated_gradients",
           "expected_gradients", "occlusion", "connection_weights"]
MANY_PASS = ["smoothgrad", "vargrad", "integrated_gradients", "expected_gradients", "occlusion"]


@pytest.mark.parametrize("name", METHODS)
def test_several_targets_equal_separate_calls(name):
    model, x = relu_mlp(), inputs(3, 5)
    targets = torch.tensor([[0, 3], [2, 2], [1, 0]])
    extra = {} if name in ("gradient", "gradient_x_input", "connection_weights") \
        else {"batch_size": 4}
    e = run_method(name, model, x, target=targets, **extra)
    assert e.relevance.shape == (3, 2, 5) and torch.equal(e.target, targets)
    for k in range(2):
        single = run_method(name, model, x, target=targets[:, k])
        close(e.relevance[:, k], single.relevance)
        if single.convergence is not None:
            close(e.convergence[:, k], single.convergence)


@pytest.mark.parametrize("name", MANY_PASS)
def test_chunked_equals_unchunked(name):
    model, x = relu_mlp(), inputs(5, 5)
    whole = run_method(name, model, x, batch_size=10_000)
    for batch_size in (1, 3, 7):
        close(run_method(name, model, x, batch_size=batch_size).relevance, whole.relevance)


def test_progress_bar(capsys):
    G.integrated_gradients(relu_mlp(), inputs(3, 5), steps=4, batch_size=2, progress=True)
    assert "IntegratedGradients" in capsys.readouterr().err
    G.integrated_gradients(relu_mlp(), inputs(3, 5), steps=4, batch_size=2, progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call,error,match", [
    (lambda m, x: G.gradient(m, x * float("nan")), ValueError, "NaN"),
    (lambda m, x: G.smoothgrad(m, x, target=9), ValueError, "out of range"),
    (lambda m, x: G.integrated_gradients(m, x, target=[0, 1]), ValueError, "targets for a batch"),
    (lambda m, x: G.gradient(m, x, target=lambda out: out), TypeError, "class indices"),
    (lambda m, x: G.integrated_gradients(m, x, target=1.5), TypeError, "integers"),
    (lambda m, x: G.integrated_gradients(m, x, baseline=torch.zeros(2, 5)), ValueError,
     "baseline of shape"),
    (lambda m, x: G.integrated_gradients(m, x, baseline=torch.zeros(4)), ValueError,
     "baseline of shape"),
    (lambda m, x: G.integrated_gradients(m, x, baseline=torch.full((5,), float("inf"))),
     ValueError, "baseline contains"),
    (lambda m, x: G.integrated_gradients(m, x, steps=0), ValueError, "steps"),
    (lambda m, x: G.integrated_gradients(m, x, steps=1, method="riemann_trapezoid"),
     ValueError, "steps >= 2"),
    (lambda m, x: G.integrated_gradients(m, x, method="simpson"), ValueError, "method"),
    (lambda m, x: G.smoothgrad(m, x, n=0), ValueError, "n must"),
    (lambda m, x: G.smoothgrad(m, x, noise_level=-0.1), ValueError, "noise_level"),
    (lambda m, x: G.smoothgrad(m, x, mode="median"), ValueError, "mode"),
    (lambda m, x: G.smoothgrad(m, x, batch_size=0), ValueError, "batch_size"),
    (lambda m, x: G.smoothgrad(m, x, seed=1.5), TypeError, "seed"),
    (lambda m, x: G.expected_gradients(m, x, torch.zeros(3, 4)), ValueError, "background"),
    (lambda m, x: G.occlusion(m, x, window=6), ValueError, "larger than"),
    (lambda m, x: G.occlusion(m, x, window=(1, 1)), ValueError, "entries"),
    (lambda m, x: G.occlusion(m, x, window=2, stride=0), ValueError, "stride"),
    (lambda m, x: G.occlusion(m, x, window=2, fill=torch.zeros(4)), ValueError, "fill"),
    (lambda m, x: G.occlusion(m, x, window=2, composite=EpsilonPlus()), ValueError,
     "cannot use a composite"),
    (lambda m, x: G.connection_weights(m, x, composite=EpsilonPlus()), ValueError,
     "cannot use a composite"),
])
def test_clear_errors_leave_the_model_untouched(call, error, match):
    model = nn.Sequential(relu_mlp(), nn.Softmax(dim=1)).eval()
    x = inputs(3, 5)
    before = model(x)
    with pytest.raises(error, match=match):
        call(model, x)
    with pytest.raises(ValueError, match="out of range"):  # fails inside the stripped session
        G.integrated_gradients(model, x, target=7, strip_softmax=True)
    assert no_hooks(model)
    assert "forward" not in vars(model[1])
    close(model(x), before)
