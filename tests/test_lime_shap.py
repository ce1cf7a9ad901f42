"""LIME and Kernel SHAP against independent oracles: Shapley values by brute-force
enumeration, linear models (whose Shapley values and LIME coefficients are known in
closed form), and the methods' own invariances (seeds, chunking, several targets)."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lrp import demo
from lrp.features import Features, elements, from_mask, grid, resolve, superpixels
from lrp.kernel_shap import kernel_shap, shapley_coalitions, shapley_kernel
from lrp.lime import lime


def linear_model(n_in=6, n_out=3, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out).double().eval()


def brute_force_shapley(f, x, background, target):
    """phi_i = sum_S |S|! (M-|S|-1)! / M! (v(S + i) - v(S)), with
    v(S) = mean_j f(x_S, r_j, not S)_target, enumerating every coalition S."""
    m = x.shape[0]

    def v(coalition):
        z = background.clone()
        z[:, list(coalition)] = x[list(coalition)]
        with torch.no_grad():
            return f(z)[:, target].mean()

    phi = torch.zeros(m, dtype=x.dtype)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            for coalition in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                phi[i] += weight * (v(coalition + (i,)) - v(coalition))
    return phi


# --------------------------------------------------------------------------- Kernel SHAP
def test_kernel_shap_equals_brute_force_shapley_values_on_a_nonlinear_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 8), nn.Softplus(),
                          nn.Linear(8, 3)).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    background = torch.randn(7, 4, dtype=torch.float64)
    e = kernel_shap(model, x, target=2, background=background, n_samples=14)  # 2^4 - 2
    expected = torch.stack([brute_force_shapley(model, x[b], background, 2) for b in range(5)])
    torch.testing.assert_close(e.relevance, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e.surrogate.coefficients, expected, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        phi0 = model(background)[:, 2].mean()
    torch.testing.assert_close(e.surrogate.intercept, phi0.expand(5))
    assert e.convergence.abs().max() < 1e-12


def test_kernel_shap_on_a_linear_model_is_w_times_x_minus_background_mean():
    model = linear_model(6, 3)
    x = torch.randn(4, 6, dtype=torch.float64)
    background = torch.randn(9, 6, dtype=torch.float64)
    expected = model.weight[1].detach() * (x - background.mean(0))
    # exact enumeration (2^6 - 2 = 62) and sampled coalitions give the same values
    for n_samples in (62, 20):
        e = kernel_shap(model, x, target=1, background=background, n_samples=n_samples, seed=0)
        torch.testing.assert_close(e.relevance, expected, rtol=1e-9, atol=1e-12)
        assert e.method == "KernelSHAP" and (e.target == 1).all()


def test_shapley_kernel_sampling_budget_and_exact_enumeration():
    z, w = shapley_coalitions(4, 14)
    assert z.shape == (14, 4) and len({tuple(r.tolist()) for r in z}) == 14
    torch.testing.assert_close(w, torch.tensor([shapley_kernel(4, int(s)) for s in z.sum(1)],
                                               dtype=torch.float64))
    z, w = shapley_coalitions(12, 300, torch.Generator().manual_seed(0))
    sizes = z.sum(1)
    assert len(z) == 300 and ((sizes > 0) & (sizes < 12)).all()
    # sizes 1 and 11 (24 coalitions, the heaviest) are enumerated with exact weights
    single = (sizes == 1) | (sizes == 11)
    assert single.sum() == 24 and len({tuple(r.tolist()) for r in z[single]}) == 24
    torch.testing.assert_close(w[single], torch.full((24,), shapley_kernel(12, 1),
                                                     dtype=torch.float64))
    # the drawn coalitions together carry the kernel's remaining weight
    total = sum((12 - 1) / (s * (12 - s)) for s in range(2, 11))
    torch.testing.assert_close(w[~single].sum(), torch.tensor(total, dtype=torch.float64))


def test_kernel_shap_sampling_converges_to_the_exact_values():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 2)).double().eval()
    x = torch.randn(3, 10, dtype=torch.float64)
    exact = kernel_shap(model, x, n_samples=2 ** 10).relevance
    errors = [(kernel_shap(model, x, n_samples=n, seed=0).relevance - exact).abs().max()
              for n in (60, 600)]
    assert errors[1] < errors[0] and errors[1] < 0.05 * exact.abs().max()


# --------------------------------------------------------------------------- LIME
def test_lime_recovers_the_coefficients_of_a_linear_model():
    model = linear_model(6, 3)
    x = torch.randn(4, 6, dtype=torch.float64)
    reference = torch.randn(6, dtype=torch.float64)
    e = lime(model, x, target=2, background=reference, alpha=0.0, n_samples=100, seed=0)
    # f_x(z) = b + sum_i w_i (reference_i + z_i (x_i - reference_i)): linear in z
    w = model.weight[2].detach()
    torch.testing.assert_close(e.surrogate.coefficients, w * (x - reference), rtol=1e-9,
                               atol=1e-12)
    torch.testing.assert_close(e.surrogate.intercept, (model.bias[2] + w @ reference).detach()
                               .expand(4))
    torch.testing.assert_close(e.surrogate.score, torch.ones(4, dtype=torch.float64))
    # where x - reference = 1 the coefficients are the weights themselves
    e = lime(model, torch.ones(1, 6, dtype=torch.float64), target=0, alpha=0.0, n_samples=50,
             seed=0)
    torch.testing.assert_close(e.relevance[0], model.weight[0].detach())


def test_lime_ridge_and_kernel_match_the_weighted_ridge_written_out():
    """The fit is argmin sum_z pi(z) (y - b - c.z)^2 + alpha |c|^2 with
    pi(z) = exp(-D^2 / (2 sigma^2)): solved here with numpy's lstsq on the
    augmented system, from LIME's own coalitions."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)).double().eval()
    x = torch.randn(2, 5, dtype=torch.float64)
    for distance in ("cosine", "euclidean"):
        e = lime(model, x, target=1, n_samples=40, alpha=0.7, kernel_width=0.4,
                 distance=distance, seed=5)
        gen = torch.Generator().manual_seed(5)
        for b in range(2):
            z = np.ones((40, 5))
            z[1:] = (torch.rand(39, 5, generator=gen) < 0.5).numpy()
            with torch.no_grad():
                y = model(torch.where(torch.from_numpy(z).bool(), x[b], 0.0))[:, 1].numpy()
            share = z.sum(1) / 5
            d = 1 - np.sqrt(share) if distance == "cosine" else np.sqrt(1 - share)
            pi = np.exp(-d ** 2 / (2 * 0.4 ** 2))
            design = np.hstack([np.ones((40, 1)), z]) * np.sqrt(pi)[:, None]
            penalty = np.hstack([np.zeros((5, 1)), np.sqrt(0.7) * np.eye(5)])
            solution = np.linalg.lstsq(np.vstack([design, penalty]),
                                       np.concatenate([y * np.sqrt(pi), np.zeros(5)]),
                                       rcond=None)[0]
            np.testing.assert_allclose(e.surrogate.coefficients[b].numpy(), solution[1:],
                                       rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(float(e.surrogate.intercept[b]), solution[0], rtol=1e-8)


def test_lime_feature_selection_keeps_the_strongest_features_of_a_linear_model():
    model = linear_model(8, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.1, -3.0, 0.2, 2.0, -0.05, 0.0, 1.0, 0.3]]))
    x = torch.ones(2, 8, dtype=torch.float64)
    for selection in ("forward", "highest_weights"):
        e = lime(model, x, target=0, n_features=3, selection=selection, alpha=0.0, n_samples=200,
                 seed=0)
        kept = e.surrogate.coefficients != 0
        assert kept.sum(1).tolist() == [3, 3]
        assert kept[:, [1, 3, 6]].all(), selection
        # refit on the chosen features: their coefficients are the weights
        torch.testing.assert_close(e.surrogate.coefficients[:, [1, 3, 6]],
                                   model.weight[0, [1, 3, 6]].detach().expand(2, 3), rtol=0.05,
                                   atol=0.05)


# --------------------------------------------------------------------------- both methods
@pytest.mark.parametrize("method", [lime, kernel_shap])
def test_seeded_runs_repeat_and_chunking_does_not_matter(method):
    model = demo.load_demo_model()
    x, _ = demo.demo_inputs(2)
    kwargs = dict(background=demo.LOW, n_samples=40)
    a = method(model, x, features=grid(x, 4), seed=7, batch_size=1000, **kwargs)
    b = method(model, x, features=grid(x, 4), seed=torch.Generator().manual_seed(7),
               batch_size=7, **kwargs)
    torch.testing.assert_close(a.relevance, b.relevance, rtol=1e-5, atol=1e-6)
    c = method(model, x, features=grid(x, 4), seed=8, **kwargs)
    assert not torch.allclose(a.relevance, c.relevance)
    # the first sample alone: the same draws, as the samples draw in turn
    one = method(model, x[:1], features=grid(x[:1], 4), seed=7, **kwargs)
    torch.testing.assert_close(one.relevance, a.relevance[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", [lime, kernel_shap])
def test_groups_of_samples_and_different_feature_counts(method, monkeypatch):
    """Per-sample masks with 6, 3, 2, 6 and 1 features; explaining the samples in
    groups of one (a tiny memory bound) gives the same values as all at once."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 2, 2], [4, 4, 4, 9, 9, 9],
                         [5, 4, 3, 2, 1, 0], [7, 7, 7, 7, 7, 7]])
    whole = method(model, x, features=mask, n_samples=40, seed=3)
    assert whole.surrogate.features.counts.tolist() == [6, 3, 2, 6, 1]
    assert whole.surrogate.coefficients.shape == (5, 6)
    assert (whole.surrogate.coefficients[1, 3:] == 0).all()  # padding columns
    monkeypatch.setattr("lrp.surrogate.GROUP_ENTRIES", 1)
    grouped = method(model, x, features=mask, n_samples=40, seed=3)
    torch.testing.assert_close(grouped.relevance, whole.relevance)
    torch.testing.assert_close(grouped.surrogate.coefficients, whole.surrogate.coefficients)
    torch.testing.assert_close(grouped.surrogate.intercept, whole.surrogate.intercept)


@pytest.mark.parametrize("method", [lime, kernel_shap])
def test_several_targets_equal_separate_runs(method):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).double().eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    targets = torch.tensor([[0, 3], [1, 2], [3, 3]])
    both = method(model, x, target=targets, n_samples=20, seed=1)
    assert both.relevance.shape == (3, 2, 5) and both.target.tolist() == targets.tolist()
    for k in range(2):
        single = method(model, x, target=targets[:, k], n_samples=20, seed=1)
        torch.testing.assert_close(both.relevance[:, k], single.relevance)


@pytest.mark.parametrize("method", [lime, kernel_shap])
def test_spread_relevance_sums_to_the_feature_values_on_images(method):
    model = demo.load_demo_model()
    x, _ = demo.demo_inputs(2)
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[:, 16:] = 5  # labels need not be consecutive
    mask[20:, :] = 9
    e = method(model, x, features=mask, background=demo.LOW, n_samples=30, seed=0)
    assert e.surrogate.features.counts.tolist() == [3, 3]
    values = e.surrogate.coefficients
    for label, feature in ((0, 0), (5, 1), (9, 2)):
        region = (mask == label).expand(1, 32, 32)
        torch.testing.assert_close(e.relevance[:, region].sum(1), values[:, feature])
        # evenly spread: constant over the feature's pixels
        torch.testing.assert_close(e.relevance[:, region].std(1), torch.zeros(2), atol=1e-6,
                                   rtol=0)
    if method is kernel_shap:  # efficiency on the input-shaped map
        with torch.no_grad():
            drop = model(x).gather(1, e.target[:, None])[:, 0] - \
                model(torch.full_like(x[:1], demo.LOW))[0, e.target]
        torch.testing.assert_close(e.conservation(), drop, rtol=1e-4, atol=1e-4)


def test_float64_inputs_give_float64_results_and_the_model_is_untouched():
    model = linear_model(6, 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 6, dtype=torch.float64)
    for method in (lime, kernel_shap):
        e = method(model, x, n_samples=16, seed=0)
        assert e.relevance.dtype == torch.float64 and e.relevance.device == x.device
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", [lime, kernel_shap])
def test_bad_arguments_fail_with_clear_errors(method):
    model = linear_model(6, 3)
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_samples"):
        method(model, x, n_samples=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        method(model, x, features=torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integers"):
        method(model, x, features=torch.zeros(6))
    with pytest.raises(ValueError, match="background"):
        method(model, x, background=torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="class indices"):
        method(model, x, target=lambda out: out)
    with pytest.raises(ValueError, match="target out of range"):
        method(model, x, target=3)
    if method is lime:
        with pytest.raises(ValueError, match="kernel_width"):
            lime(model, x, kernel_width=0)
        with pytest.raises(ValueError, match="distance"):
            lime(model, x, distance="manhattan")


# --------------------------------------------------------------------------- features
def test_features_grid_elements_masks_and_defaults():
    x = torch.zeros(2, 3, 6, 8)
    g = grid(x, (2, 4))
    assert g.counts.tolist() == [8, 8]
    # element (c, i, j) is in cell (i * 2 // 6) * 4 + j * 4 // 8, for every channel
    i, j = torch.meshgrid(torch.arange(6), torch.arange(8), indexing="ij")
    expected = (i * 2 // 6) * 4 + j * 4 // 8
    assert torch.equal(g.mask, expected.expand(2, 3, 6, 8))
    assert resolve(None, x).counts.tolist() == [48, 48]  # default: 8 cells a side, 6 rows here
    tab = torch.zeros(4, 5)
    assert torch.equal(resolve(None, tab).mask, elements(tab).mask)
    assert elements(tab).mask[0].tolist() == [0, 1, 2, 3, 4]
    m = from_mask(torch.tensor([[7, 7, -1, 3, 3], [0, 1, 1, 1, 1], [2, 2, 2, 2, 2],
                                [1, 2, 3, 4, 5]]), tab)
    assert m.counts.tolist() == [3, 2, 1, 5]
    assert m.mask[0].tolist() == [2, 2, 0, 1, 1]  # renumbered in increasing order
    with pytest.raises(ValueError, match="exceed"):
        grid(x, 7)
    with pytest.raises(ValueError, match="made for inputs"):
        resolve(g, torch.zeros(1, 3, 6, 8))
    assert isinstance(resolve(g, x), Features)


def test_superpixels_follow_the_image_and_drive_both_methods():
    pytest.importorskip("skimage")
    x = torch.zeros(2, 3, 32, 32)
    x[0, :, :, 16:] = 1.0  # two flat halves: SLIC must not cut across the edge
    x[1, 0, 8:24, 8:24] = 1.0  # a red square
    f = superpixels(x, n_segments=8, compactness=1.0, sigma=0.0)
    assert (f.counts >= 2).all()
    left, right = f.mask[0, 0, :, :16], f.mask[0, 0, :, 16:]
    assert not set(left.unique().tolist()) & set(right.unique().tolist())
    square = f.mask[1, 0, 8:24, 8:24]
    assert not set(square.unique().tolist()) & set(f.mask[1, 0, :4, :4].unique().tolist())
    assert torch.equal(f.mask[:, 0], f.mask[:, 2])  # channels together

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)).eval()
    e = kernel_shap(model, x, target=0, features=f, n_samples=2 ** int(f.counts.max()))
    with torch.no_grad():
        drop = model(x)[:, 0] - model(torch.zeros_like(x[:1]))[0, 0]
    torch.testing.assert_close(e.conservation(), drop, rtol=1e-4, atol=1e-5)
