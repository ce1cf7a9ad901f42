"""lrp.evaluate: every metric against an oracle written out in the test (hand formulas,
brute-force per-sample loops, an exactly linear model, scipy / scikit-image), the
sanity results on the shipped model, errors, reproducibility and the user's model
left unchanged."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lrp import evaluate, explain, gradients
from lrp.canonizers import MergeBatchNorm
from lrp.composites import (EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat,
                            GuidedBackprop)
from lrp.demo import HIGH, LOW, demo_inputs, load_demo_model
from lrp.evaluate import features, imputation


@pytest.fixture(scope="module")
def demo():
    model = load_demo_model()
    x, labels = demo_inputs(16)
    return model, x, labels


def linear_model(weights: torch.Tensor) -> nn.Module:
    """``f(x)_0 = w . x`` exactly (class 1: its negative), for ``(batch, 1, H, W)`` inputs."""
    n = weights.numel()
    layer = nn.Linear(n, 2, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([weights.flatten(), -weights.flatten()]))
    return nn.Sequential(nn.Flatten(), layer).double().eval()


@pytest.fixture
def linear():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(1, 4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    return linear_model(w), x, w


# --------------------------------------------------------------------------- hand formulas
def test_aopc_of_a_hand_made_curve():
    curve = torch.tensor([[5.0, 3.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    assert torch.allclose(evaluate.aopc(curve), torch.tensor([(0 + 2 + 4 + 5) / 4, 0.0]))


def test_gini_and_entropy_of_known_vectors():
    v = torch.tensor([[0.0, 0, 0, 1], [1, 1, 1, 1], [4, 1, 3, 2]], dtype=torch.float64)
    # sorted r = (1, 2, 3, 4): sum (2i - n - 1) r_i = -3 - 2 + 3 + 12 = 10; / (4 * 10)
    assert torch.allclose(evaluate.gini(v), torch.tensor([0.75, 0.0, 0.25], dtype=torch.float64))
    p = np.array([0.25, 0.25, 0.5])
    e = evaluate.entropy(torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 2, 0]],
                                      dtype=torch.float64))
    assert torch.allclose(e, torch.tensor([0.0, math.log(4), -(p * np.log(p)).sum()],
                                          dtype=torch.float64))
    assert torch.isnan(evaluate.gini(torch.zeros(1, 3))).all()
    assert torch.isnan(evaluate.entropy(torch.zeros(1, 3))).all()


def test_sparseness_and_complexity_use_absolute_relevance_per_pixel():
    x = torch.zeros(2, 3, 2, 2)
    r = torch.zeros(2, 3, 2, 2)
    r[0, :, 0, 0] = torch.tensor([1.0, -3.0, 0.0])  # pixel relevance -2: |.| = 2, others 0
    r[1] = torch.tensor([1.0, -1.0, 2.0]).reshape(3, 1, 1) / 3  # every pixel 2/3
    s = evaluate.sparseness(None, x, r).scores
    c = evaluate.complexity(None, x, r).scores
    assert torch.allclose(s, torch.tensor([0.75, 0.0]))
    assert torch.allclose(c, torch.tensor([0.0, math.log(4)]))


def test_similarities_against_scipy_and_scikit_image():
    import scipy.stats as scipy_stats  # scipy comes with scikit-learn (test extra)
    import skimage.feature as skimage_feature  # scikit-image: test extra
    import skimage.metrics as skimage_metrics
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 32, 32, generator=g, dtype=torch.float64)
    b = a + torch.randn(3, 32, 32, generator=g, dtype=torch.float64)
    a[0, :6] = 0.0  # ties
    b[1, 3:9] = 1.0
    spearman = evaluate.spearman(a, b)
    pearson = evaluate.pearson(a.flatten(1), b.flatten(1))
    ssim = evaluate.ssim(a, b)
    hog = evaluate.hog(a)
    for i in range(3):
        ai, bi = a[i].numpy(), b[i].numpy()
        assert spearman[i] == pytest.approx(scipy_stats.spearmanr(ai.ravel(), bi.ravel())[0], abs=1e-12)
        assert pearson[i] == pytest.approx(np.corrcoef(ai.ravel(), bi.ravel())[0, 1], abs=1e-12)
        data_range = max(ai.max(), bi.max()) - min(ai.min(), bi.min())
        assert ssim[i] == pytest.approx(
            skimage_metrics.structural_similarity(ai, bi, data_range=data_range), abs=1e-10)
        reference = skimage_feature.hog(ai)  # 9 orientations, 8x8 cells, 3x3 blocks, L2-Hys
        assert np.abs(hog[i].numpy() - reference).max() < 1e-6
    assert torch.allclose(evaluate.ssim(a, a), torch.ones(3, dtype=torch.float64))


def test_localisation_by_hand():
    x = torch.zeros(1, 1, 2, 2)
    r = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    masks = torch.tensor([[[False, True], [False, True]]])
    assert evaluate.relevance_mass_accuracy(None, x, r, masks=masks).scores.item() == pytest.approx(0.6)
    # K = 2, the two most relevant are 4 (in) and 3 (out)
    assert evaluate.relevance_rank_accuracy(None, x, r, masks=masks).scores.item() == 0.5
    assert evaluate.pointing_game(None, x, r, masks=masks).scores.item() == 1.0
    assert evaluate.pointing_game(None, x, r, masks=~masks).scores.item() == 0.0
    signed = torch.tensor([[[[-5.0, 2.0], [3.0, 0.0]]]])
    assert evaluate.relevance_mass_accuracy(None, x, signed, masks=masks).scores.item() == pytest.approx(0.4)
    assert evaluate.relevance_mass_accuracy(None, x, signed, masks=masks,
                                            part="absolute").scores.item() == pytest.approx(0.2)


# --------------------------------------------------------------------------- brute force
def brute_force_curve(model, x, relevance, target, patch, per_step, fill):
    """Pixel-flipping one sample at a time, patches ordered by a Python sort."""
    curves = []
    h, w = x.shape[2:]
    for i in range(x.shape[0]):
        pixel = relevance[i].sum(0)
        patches = [(pixel[r:r + patch, c:c + patch].sum().item(), (r, c))
                   for r in range(0, h, patch) for c in range(0, w, patch)]
        order = [rc for _, rc in sorted(patches, key=lambda s: -s[0])]  # sorted() is stable
        z = x[i:i + 1].clone()
        with torch.no_grad():
            values = [model(z)[0, target[i]].item()]
            for k in range(0, len(order), per_step):
                for r, c in order[k:k + per_step]:
                    z[..., r:r + patch, c:c + patch] = fill[i:i + 1, :, r:r + patch, c:c + patch]
                values.append(model(z)[0, target[i]].item())
        curves.append(values)
    return torch.tensor(curves, dtype=x.dtype)


@pytest.mark.parametrize("patch,per_step,batch_size", [(8, 1, 7), (4, 5, 1000)])
def test_pixel_flipping_equals_a_per_sample_loop(demo, patch, per_step, batch_size):
    model, x, labels = demo
    x, labels = x[:3], labels[:3]
    r = explain(model, x, EpsilonPlus(canonizers=[MergeBatchNorm()]), labels).relevance
    fill = features.fill_values(x, "uniform", torch.Generator().manual_seed(5))
    result = evaluate.pixel_flipping(model, x, r, labels, patch_size=patch,
                                     patches_per_step=per_step, fill="uniform", generator=5,
                                     batch_size=batch_size)
    expected = brute_force_curve(model, x, r, labels, patch, per_step, fill)
    assert torch.allclose(result.curves["morf"], expected, atol=1e-4)
    assert torch.allclose(result.scores, (expected[:, :1] - expected).mean(1), atol=1e-4)
    lerf = evaluate.pixel_flipping(model, x, r, labels, patch_size=patch, patches_per_step=per_step,
                                   fill="uniform", generator=5, order="lerf", batch_size=batch_size)
    # LeRF of R is MoRF of -R (no tied patches here)
    expected_lerf = brute_force_curve(model, x, -r, labels, patch, per_step, fill)
    assert torch.allclose(lerf.curves["lerf"], expected_lerf, atol=1e-4)
    both = evaluate.abpc(model, x, r, labels, patch_size=patch, patches_per_step=per_step,
                         fill="uniform", generator=5, batch_size=batch_size)
    assert torch.allclose(both.curves["morf"], result.curves["morf"])
    difference = evaluate.aopc(both.curves["morf"]) - evaluate.aopc(both.curves["lerf"])
    assert torch.allclose(both.scores, difference)


def test_faithfulness_correlation_equals_a_per_sample_loop(demo):
    model, x, labels = demo
    x, labels = x[:4], labels[:4]
    r = gradients.gradient_x_input(model, x, target=labels).relevance
    g = torch.Generator().manual_seed(1)
    subsets = torch.stack([torch.stack([torch.randperm(1024, generator=g)[:50] for _ in range(12)])
                           for _ in range(4)])
    result = evaluate.faithfulness_correlation(model, x, r, labels, subsets=subsets, fill="min",
                                               batch_size=5)
    for i in range(4):
        drops, sums = [], []
        with torch.no_grad():
            base = model(x[i:i + 1])[0, labels[i]].item()
            for s in subsets[i]:
                z = x[i:i + 1].clone().flatten()
                z[s] = x[i].min()
                drops.append(base - model(z.reshape(1, 1, 32, 32))[0, labels[i]].item())
                sums.append(r[i].flatten()[s].sum().item())
        assert result.scores[i].item() == pytest.approx(np.corrcoef(sums, drops)[0, 1], abs=1e-4)


@pytest.mark.parametrize("solver", ["scipy", "sparse-lu", "torch"])
@pytest.mark.parametrize("h,w", [(6, 7), (8, 5)])
def test_noisy_linear_imputation_solves_the_neighbour_equations(solver, h, w, monkeypatch):
    """Against the dense system built pixel by pixel and np.linalg.solve: the banded
    Cholesky (wide and tall images), the sparse LU beyond MAX_BAND, conjugate gradients."""
    if solver == "sparse-lu":
        monkeypatch.setattr(imputation, "MAX_BAND", 0)
        solver = "scipy"
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, h, w, generator=g, dtype=torch.float64)
    mask = torch.rand(3, h, w, generator=g) < 0.6
    mask[2] = False  # nothing removed in the last image
    out = evaluate.noisy_linear_imputation(x, mask, noise=0.0, solver=solver)
    for b in range(3):
        removed = [(i, j) for i in range(h) for j in range(w) if mask[b, i, j]]
        index = {p: k for k, p in enumerate(removed)}
        a = np.zeros((len(removed), len(removed)))
        rhs = np.zeros((len(removed), 2))
        for (i, j), k in index.items():
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if (di, dj) == (0, 0) or not (0 <= i + di < h and 0 <= j + dj < w):
                        continue
                    weight = 1 / 6 if di == 0 or dj == 0 else 1 / 12
                    a[k, k] += weight
                    if (i + di, j + dj) in index:
                        a[k, index[(i + di, j + dj)]] -= weight
                    else:
                        rhs[k] += weight * x[b, :, i + di, j + dj].numpy()
        if removed:
            solution = np.linalg.solve(a, rhs)
            for (i, j), k in index.items():
                assert np.allclose(out[b, :, i, j].numpy(), solution[k], atol=1e-8)
        assert torch.equal(out[b][:, ~mask[b]], x[b][:, ~mask[b]])
    noisy = evaluate.noisy_linear_imputation(x, mask, noise=0.5, generator=0, solver=solver)
    assert torch.equal(noisy, evaluate.noisy_linear_imputation(x, mask, noise=0.5, generator=0,
                                                               solver=solver))
    assert 0.3 < (noisy - out)[:, :, mask[0] & mask[1]].std() < 0.7
    single = evaluate.noisy_linear_imputation(x.float(), mask, noise=0.0, solver=solver)
    assert single.dtype == torch.float32 and torch.allclose(single, out.float(), atol=1e-6)


def test_imputation_solvers_agree_on_digits(demo):
    """Banded Cholesky and conjugate gradients on relevance-ordered removals of 10-90 %."""
    model, x, labels = demo
    r = gradients.gradient_x_input(model, x, target=labels).relevance.sum(1).flatten(1)
    rank = features.ranks(r, "morf").reshape(-1, 32, 32)
    for p in (10, 50, 90):
        mask = rank < int(1024 * p / 100)
        direct = evaluate.noisy_linear_imputation(x.double(), mask, noise=0.0, solver="scipy")
        iterative = evaluate.noisy_linear_imputation(x.double(), mask, noise=0.0, solver="torch")
        assert (direct - iterative).abs().max() < 1e-8
        default = evaluate.noisy_linear_imputation(x, mask, noise=0.0)
        assert torch.equal(default, direct.float())


def test_road_counts_and_accuracy(demo):
    model, x, labels = demo
    x, labels = x[:6], labels[:6]
    r = gradients.gradient_x_input(model, x, target=labels).relevance
    result = evaluate.road(model, x, r, labels, percentages=[10, 50], noise=0.0, output="logit",
                           batch_size=4)
    accuracy = evaluate.road(model, x, r, labels, percentages=[10, 50], noise=0.0)
    for col, p in enumerate([10, 50]):
        k = int(1024 * p / 100)
        order = torch.argsort(-r.flatten(1), dim=1, stable=True)[:, :k]
        mask = torch.zeros(6, 1024, dtype=torch.bool).scatter_(1, order, True).reshape(6, 32, 32)
        with torch.no_grad():
            logits = model(evaluate.noisy_linear_imputation(x, mask, noise=0.0))
        assert torch.allclose(result.curves["morf"][:, col], logits.gather(1, labels[:, None])[:, 0],
                              atol=1e-4)
        assert torch.equal(accuracy.curves["morf"][:, col], (logits.argmax(1) == labels).float())
    assert torch.equal(accuracy.scores, accuracy.curves["morf"].mean(1))


# --------------------------------------------------------------------------- linear model
def test_linear_model_ranks_features_by_their_true_contributions(linear):
    model, x, w = linear
    target = torch.zeros(5, dtype=torch.long)
    true = x * w  # exact contributions of f = w . x
    result = evaluate.pixel_flipping(model, x, true, target, fill="zero")
    contributions = true.flatten(1)
    expected = model(x)[:, 0:1] - torch.cat([torch.zeros(5, 1, dtype=x.dtype),
                                              contributions.sort(dim=1, descending=True).values.cumsum(1)],
                                             dim=1)
    assert torch.allclose(result.curves["morf"], expected.detach(), atol=1e-12)
    # no ordering removes more output earlier: AOPC-MoRF is maximal for the true contributions
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        other = evaluate.pixel_flipping(model, x, torch.randn(x.shape, generator=g, dtype=x.dtype),
                                        target, fill="zero")
        assert (result.scores >= other.scores - 1e-12).all()
    correlation = evaluate.faithfulness_correlation(model, x, true, target, fill="zero",
                                                    subset_size=5, runs=20, generator=0)
    assert torch.allclose(correlation.scores, torch.ones(5, dtype=x.dtype), atol=1e-10)
    # gradient is constant on a linear model: max-sensitivity 0
    sensitivity = evaluate.max_sensitivity(model, x, gradients.gradient, target, generator=0)
    assert torch.allclose(sensitivity.scores, torch.zeros(5, dtype=x.dtype))
    assert result.scores.dtype == torch.float64 and result.curves["morf"].dtype == torch.float64


# --------------------------------------------------------------------------- shipped model
def test_lrp_and_gradient_x_input_beat_random_on_aopc_morf(demo):
    model, x, labels = demo
    methods = {
        "EpsilonGammaBox": EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()]),
        "EpsilonPlus": EpsilonPlus(canonizers=[MergeBatchNorm()]),
        "EpsilonPlusFlat": EpsilonPlusFlat(canonizers=[MergeBatchNorm()]),
        "EpsilonAlpha2Beta1": EpsilonAlpha2Beta1(canonizers=[MergeBatchNorm()]),
        "GradientXInput": gradients.gradient_x_input,
        "Random": evaluate.random_method(0),
    }
    # the first quarter of the 4x4 patches, where the orders differ most
    result = evaluate.compare(model, x, methods, labels, metrics=["AOPC-MoRF"],
                              options={"pixel_flipping": {"patch_size": 4, "steps": 16}})
    random = result.results["Random"]["AOPC-MoRF"].scores
    for name in methods:
        if name != "Random":  # paired over the same digits and fills: clearly above random
            gain = result.results[name]["AOPC-MoRF"].scores - random
            assert gain.mean() > 3 * gain.std() / math.sqrt(len(gain)), name


def test_guided_backprop_fails_and_gradient_passes_the_cascading_randomization(demo):
    model, x, labels = demo
    x, labels = x[:8], labels[:8]
    state = copy.deepcopy(model.state_dict())
    gbp = evaluate.model_parameter_randomization(model, x, GuidedBackprop(), labels, generator=0)
    grad = evaluate.model_parameter_randomization(model, x, gradients.gradient, labels, generator=0)
    assert gbp.labels == ["classifier.1", "features.9", "features.8", "features.5", "features.4",
                          "features.1", "features.0"]
    # the output layer randomized: guided backprop's map barely changes, the gradient's does
    assert gbp.curves["spearman"][:, 0].mean() > 0.5
    assert grad.curves["spearman"][:, 0].mean() < 0.35
    for measure in ("spearman", "ssim", "hog"):
        assert gbp.curves[measure].mean() > 1.5 * grad.curves[measure].mean(), measure
    assert gbp.mean() > 2 * grad.mean()
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_randomization_is_reproducible_and_independent_order_resets(demo):
    model, x, labels = demo
    x, labels = x[:3], labels[:3]
    a = evaluate.model_parameter_randomization(model, x, gradients.gradient, labels, generator=4,
                                               similarity="spearman", layers=["classifier.1", "features.0"])
    b = evaluate.model_parameter_randomization(model, x, gradients.gradient, labels, generator=4,
                                               similarity="spearman", layers=["features.0", "classifier.1"])
    assert torch.equal(a.curves["spearman"], b.curves["spearman"])
    assert a.labels == ["classifier.1", "features.0"]
    seen = []

    def randomize(name, module, generator):
        seen.append((name, module.weight.detach().clone()))
        with torch.no_grad():
            module.weight.mul_(-1)

    evaluate.model_parameter_randomization(model, x, gradients.gradient, labels, order="independent",
                                           randomize=randomize, layers=["classifier.1", "features.8"])
    # independent: features.8 is randomized in a copy with the original classifier.1
    assert torch.equal(seen[0][1], model.classifier[1].weight)
    assert torch.equal(seen[1][1], model.features[8].weight)


def test_random_logit_is_lower_for_class_sensitive_methods(demo):
    model, x, labels = demo
    grad = evaluate.random_logit(model, x, gradients.gradient, labels, generator=0)
    gbp = evaluate.random_logit(model, x, GuidedBackprop(), labels, generator=0)
    other = grad.curves["other_class"][:, 0]
    assert (other != labels).all() and torch.equal(other, gbp.curves["other_class"][:, 0])
    assert grad.mean() < gbp.mean()


def test_model_unchanged_after_an_error_inside_randomization(demo):
    model, x, labels = demo
    state = copy.deepcopy(model.state_dict())
    calls = []

    def failing(model_, inputs, target=None):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return gradients.gradient(model_, inputs, target=target)

    with pytest.raises(RuntimeError, match="boom"):
        evaluate.model_parameter_randomization(model, x[:2], failing, labels[:2])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- randomness, compare
def test_seeded_generator_reproduces_scores(demo):
    model, x, labels = demo
    x, labels = x[:4], labels[:4]
    r = gradients.gradient_x_input(model, x, target=labels).relevance
    kw = dict(patch_size=8, fill="uniform")
    one = evaluate.pixel_flipping(model, x, r, labels, generator=11, **kw)
    two = evaluate.pixel_flipping(model, x, r, labels, generator=torch.Generator().manual_seed(11), **kw)
    three = evaluate.pixel_flipping(model, x, r, labels, generator=12, **kw)
    assert torch.equal(one.curves["morf"], two.curves["morf"])
    assert not torch.equal(one.curves["morf"], three.curves["morf"])
    f1 = evaluate.faithfulness_correlation(model, x, r, labels, runs=10, generator=3)
    f2 = evaluate.faithfulness_correlation(model, x, r, labels, runs=10, generator=3)
    assert torch.equal(f1.scores, f2.scores)


def test_compare_uses_the_same_perturbations_for_every_method(demo, tmp_path, monkeypatch):
    model, x, labels = demo
    x, labels = x[:4], labels[:4]
    r = explain(model, x, EpsilonPlus(canonizers=[MergeBatchNorm()]), labels).relevance
    methods = {"a": EpsilonPlus(canonizers=[MergeBatchNorm()]), "b": r,
               "random": evaluate.random_method(1)}
    result = evaluate.compare(model, x, methods, labels,
                              metrics=["ABPC", "FaithfulnessCorrelation", "ROAD-MoRF", "Sparseness"],
                              options={"pixel_flipping": {"patch_size": 8},
                                       "faithfulness_correlation": {"runs": 10},
                                       "road": {"percentages": [20, 60]}})
    for metric in result.metrics:  # same relevance, same perturbations -> same numbers
        assert torch.allclose(result.results["a"][metric].scores, result.results["b"][metric].scores,
                              atol=1e-5, equal_nan=True), metric
    direct = evaluate.faithfulness_correlation(model, x, r, labels, runs=10, generator=0)
    assert torch.allclose(result.results["b"]["FaithfulnessCorrelation"].scores, direct.scores)
    table = result.table()
    assert list(table.index) == ["a", "b", "random"] and "ABPC SE" in table.columns
    assert "| a | " in result.markdown() and "ABPC ↑" in result.markdown()
    rows = result.to_csv(tmp_path / "t.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("method,ABPC,ABPC SE")
    png = tmp_path / "curves.png"
    result.plot_curves(png)
    assert png.stat().st_size > 5000
    import builtins
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    plain = result.table()
    assert isinstance(plain, list) and plain[0]["method"] == "a"


# --------------------------------------------------------------------------- errors
def test_bad_inputs_get_clear_errors(demo):
    model, x, labels = demo
    x, labels = x[:2], labels[:2]
    r = torch.rand(2, 1, 32, 32)
    with pytest.raises(ValueError, match="relevance of shape"):
        evaluate.pixel_flipping(model, x, torch.rand(2, 1, 16, 16), labels)
    with pytest.raises(ValueError, match="relevance of shape"):
        evaluate.sparseness(None, x, torch.rand(3, 1, 32, 32))
    with pytest.raises(ValueError, match="masks of shape"):
        evaluate.relevance_mass_accuracy(None, x, r, masks=torch.ones(2, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="mark no feature"):
        evaluate.pointing_game(None, x, r, masks=torch.zeros(2, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not divide"):
        evaluate.pixel_flipping(model, x, r, labels, patch_size=5)
    with pytest.raises(ValueError, match="larger than the number of patches"):
        evaluate.pixel_flipping(model, x, r, labels, patch_size=8, patches_per_step=17)
    with pytest.raises(ValueError, match="perturb more than"):
        evaluate.pixel_flipping(model, x, r, labels, patch_size=8, steps=9, patches_per_step=2)
    with pytest.raises(ValueError, match="larger than the number of features"):
        evaluate.faithfulness_correlation(model, x, r, labels, subset_size=1025)
    with pytest.raises(ValueError, match=r"percentages must be in \(0, 100\)"):
        evaluate.road(model, x, r, labels, percentages=[50, 100])
    with pytest.raises(ValueError, match="fill must be one of"):
        evaluate.pixel_flipping(model, x, r, labels, fill="black")
    with pytest.raises(TypeError, match="not a relevance tensor"):
        evaluate.model_parameter_randomization(model, x, r, labels)
    with pytest.raises(ValueError, match="NaN"):
        evaluate.complexity(None, x, r * float("nan"))
    with pytest.raises(ValueError, match="target out of range"):
        evaluate.pixel_flipping(model, x, r, 10)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate.compare(model, x, {"r": r}, labels, metrics=["AOPC"])


def test_every_module_is_importable_next_to_the_functions():
    """No function of lrp.evaluate has the name of one of its modules (a function
    ``road`` once hid the module ``road``)."""
    import importlib
    import pkgutil
    modules = {m.name for m in pkgutil.iter_modules(evaluate.__path__)}
    assert not modules & set(evaluate.__all__)
    for name in modules:
        module = importlib.import_module(f"lrp.evaluate.{name}")
        assert module.__name__ == f"lrp.evaluate.{name}"
    assert importlib.import_module("lrp.evaluate.removal").road is evaluate.road
    assert importlib.import_module("lrp.evaluate.comparison").compare is evaluate.compare
    assert importlib.import_module("lrp.evaluate.sparsity").complexity is evaluate.complexity


def test_imputation_groups_in_parallel_equal_one_system(demo):
    """The batch split into one group per torch thread (solved in parallel threads) gives
    the values of the single block-diagonal system (to rounding: LAPACK's blocking
    follows the band width of each group), and leaves the BLAS thread count as it was."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    model, x, labels = demo
    mask = torch.rand(x.shape[0], 32, 32, generator=torch.Generator().manual_seed(0)) < 0.5
    blas_before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        parallel = evaluate.noisy_linear_imputation(x.double(), mask, noise=0.0, solver="scipy")
        torch.set_num_threads(1)
        single = evaluate.noisy_linear_imputation(x.double(), mask, noise=0.0, solver="scipy")
    finally:
        torch.set_num_threads(threads)
    assert (parallel - single).abs().max() < 1e-12
    assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info()] == blas_before
