"""Concept relevance propagation (lrp.crp) against independent oracles.

The oracles are ordinary :func:`lrp.explain` runs with tensor hooks that mask the
gradient (the relevance ratio) at a layer's output, or capture it; they share no
code with the batched propagation of lrp.crp.
"""
import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrp
from lrp import crp
from lrp import rules as R
from lrp.canonizers import MergeBatchNorm
from lrp.composites import (Composite, Convolution, Dense, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat,
                            GlobalTypeMap, LayerMap, Linear)
from lrp.demo import HIGH, LOW, demo_inputs, load_demo_model

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- oracles
def masked_explain(model, x, composite, masks, target=None, capture=()):
    """``explain`` with the gradient at some tensors multiplied by masks.

    ``masks``: consumer module name -> mask for the gradient at its first input (the
    output of the conditioned layer, after the rules replaced it).  ``capture``:
    consumer module names whose first input's relevance ``a * grad`` is returned.
    """
    modules = dict(model.named_modules())
    captured = {}
    handles = []

    def masker(mask):
        def hook(module, args):
            args[0].register_hook(lambda g: g * mask)
        return hook

    def keeper(name):
        def hook(module, args):
            a = args[0]
            a.register_hook(lambda g: captured.__setitem__(name, (a.detach() * g)))
        return hook

    try:
        for name, mask in masks.items():
            handles.append(modules[name].register_forward_pre_hook(masker(mask)))
        for name in capture:
            handles.append(modules[name].register_forward_pre_hook(keeper(name)))
        e = lrp.explain(model, x, composite, target)
    finally:
        for h in handles:
            h.remove()
    return e, captured


def channel_mask(n, ids, ndim=4):
    m = torch.zeros(n)
    m[list(ids)] = 1.0
    return m.view(1, n, *([1] * (ndim - 2)))


def close(a, b, tol=1e-5):
    scale = max(b.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= tol * scale, (a - b).abs().max().item() / scale


def no_hooks(model):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not m._backward_hooks and not getattr(m, "_backward_pre_hooks", {})


def frozen(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, state):
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def digits():
    return load_demo_model()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


COMPOSITES = {
    # ZBox at the input (exact sinks), generalized gamma on the convolutions
    "EpsilonGammaBox": lambda: EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()]),
    # generalized gamma on a layer with negative inputs: masked terms
    "GeneralizedGamma": lambda: Composite(
        GlobalTypeMap([(Convolution, R.GeneralizedGamma(0.25)), (Dense, R.Epsilon())]),
        canonizers=[MergeBatchNorm()]),
    # Flat at the input: relevance reaches the input only through Flat's own leaf
    "EpsilonPlusFlat": lambda: EpsilonPlusFlat(canonizers=[MergeBatchNorm()]),
    # Flat on an inner layer: relevance bridged back to the ratio engine
    "AlphaBeta+inner Flat": lambda: Composite(
        GlobalTypeMap([(Linear, R.AlphaBeta(2.0, 1.0))]), LayerMap("features.4", R.Flat()),
        canonizers=[MergeBatchNorm()]),
}


# ----------------------------------------------------------------------------- identities
@pytest.mark.parametrize("name", list(COMPOSITES))
@pytest.mark.parametrize("batch_size", [1, 16])
def test_channel_heatmaps_sum_to_lrp_heatmap(digits, name, batch_size):
    composite = COMPOSITES[name]()
    x, _ = demo_inputs(3)
    e = lrp.explain(digits, x, composite)
    for layer, n in (("features.8", 64), ("features.4", 32)):
        ce = crp.attribute(digits, x, composite, [{layer: [c]} for c in range(n)],
                           batch_size=batch_size)
        assert ce.relevance.shape == (3, n, 1, 32, 32)
        assert torch.equal(ce.target, e.target[:, None].expand(3, n))
        close(ce.relevance.sum(1), e.relevance)


def test_linear_units_sum_and_oracle():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU(),
                          nn.Linear(9, 4)).eval()
    x = torch.randn(5, 6)
    composite = Composite(GlobalTypeMap([(Dense, R.Gamma(0.1))]))
    e = lrp.explain(model, x, composite)
    ce = crp.attribute(model, x, composite, [{"2": [u]} for u in range(9)])
    close(ce.relevance.sum(1), e.relevance)
    oracle, _ = masked_explain(model, x, composite, {"3": channel_mask(9, [4], ndim=2)})
    close(ce.relevance[:, 4], oracle.relevance)


# ----------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("name", list(COMPOSITES))
def test_conditions_match_masked_backward(digits, name):
    composite = COMPOSITES[name]()
    x, _ = demo_inputs(2)
    conditions = [
        {"features.8": [5]},
        {"features.8": [5, 17, 40]},                     # union of channels
        {"features.8": [9], "features.4": [3]},          # two layers, in any order
        {"features.4": [3], "features.8": [9], "y": 7},  # another target
        crp.Condition({"features.0": [2]}, target=[1, 2]),  # one target per sample
        {"y": 4},                                        # no layer: plain LRP
    ]
    ce = crp.attribute(digits, x, composite, conditions, batch_size=2)
    oracles = [
        masked_explain(digits, x, composite, {"features.9": channel_mask(64, [5])}),
        masked_explain(digits, x, composite, {"features.9": channel_mask(64, [5, 17, 40])}),
        masked_explain(digits, x, composite, {"features.9": channel_mask(64, [9]),
                                              "features.5": channel_mask(32, [3])}),
        masked_explain(digits, x, composite, {"features.9": channel_mask(64, [9]),
                                              "features.5": channel_mask(32, [3])}, target=7),
        masked_explain(digits, x, composite, {"features.1": channel_mask(16, [2])},
                       target=[1, 2]),
        masked_explain(digits, x, composite, {}, target=4),
    ]
    for i, (oracle, _) in enumerate(oracles):
        close(ce.relevance[:, i], oracle.relevance)
        assert torch.equal(ce.target[:, i], oracle.target)


def test_recorded_concept_relevance_and_activations(digits):
    composite = COMPOSITES["EpsilonGammaBox"]()
    x, _ = demo_inputs(2)
    ce = crp.attribute(digits, x, composite, [{"features.8": [12]}, {"features.8": [30]}],
                       record=["features.8", "features.4"])
    for i, c in enumerate((12, 30)):
        _, cap = masked_explain(digits, x, composite, {"features.9": channel_mask(64, [c])},
                                capture=["features.9", "features.5"])
        close(ce.concept_relevance["features.4"][:, i], cap["features.5"].sum((2, 3)))
        close(ce.concept_relevance["features.8"][:, i], cap["features.9"].sum((2, 3)))
    # activations: the canonized layer's output, i.e. the original conv + batch norm
    with torch.no_grad():
        act8, act4 = digits.features[:10](x), digits.features[:6](x)
    torch.testing.assert_close(ce.activations["features.8"], act8, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ce.activations["features.4"], act4, rtol=1e-4, atol=1e-5)


def test_spatial_concepts(digits):
    """User-defined concepts: the four quadrants of an 8x8 feature map."""
    composite = COMPOSITES["EpsilonGammaBox"]()
    x, _ = demo_inputs(2)
    masks = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    for q, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        masks[q, 0, r:r + 4, c:c + 4] = True
    concepts = {"features.8": crp.MaskConcept(masks)}
    ce = crp.attribute(digits, x, composite, [{"features.8": [q]} for q in range(4)],
                       concepts=concepts, record=["features.8"])
    e = lrp.explain(digits, x, composite)
    close(ce.relevance.sum(1), e.relevance)
    oracle, cap = masked_explain(digits, x, composite, {"features.9": masks[2].float()[None]},
                                 capture=["features.9"])
    close(ce.relevance[:, 2], oracle.relevance)
    # the recorded relevance of each quadrant under condition 2: only quadrant 2 has any
    rec = ce.concept_relevance["features.8"][:, 2]
    expected = torch.stack([(cap["features.9"] * m).sum((1, 2, 3)) for m in masks.float()], 1)
    close(rec, expected)


def test_top_concepts(digits):
    composite = COMPOSITES["EpsilonGammaBox"]()
    x, _ = demo_inputs(3)
    ranking = crp.top_concepts(digits, x, composite, "features.8", k=4, heatmap=True)
    e, cap = masked_explain(digits, x, composite, {}, capture=["features.9"])
    per_channel = cap["features.9"].sum((2, 3))
    order = np.argsort(-per_channel.numpy(), axis=1, kind="stable")[:, :4]
    assert np.array_equal(ranking.ids.numpy(), order)
    close(ranking.relevance, per_channel.gather(1, ranking.ids))
    close(ranking.share, ranking.relevance / per_channel.sum(1, keepdim=True))
    close(ranking.heatmap, e.relevance)
    for s in range(3):
        for j in (0, 3):
            c = int(ranking.ids[s, j])
            oracle, _ = masked_explain(digits, x[s:s + 1], composite,
                                       {"features.9": channel_mask(64, [c])})
            close(ranking.heatmaps[s, j], oracle.relevance[0])


# ----------------------------------------------------------------------------- residual
def test_resnet18_conditions(resnet):
    composite = EpsilonGammaBox(-3.0, 3.0, canonizers=[MergeBatchNorm()])
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    e = lrp.explain(resnet, x, composite)
    ce = crp.attribute(resnet, x, composite, [{"layer3": [c]} for c in range(256)],
                       batch_size=64)
    close(ce.relevance.sum(1), e.relevance)
    ce = crp.attribute(resnet, x, composite, [{"layer2": [7]}, {"layer2": [7], "y": 3}])
    for i, target in enumerate((None, 3)):
        oracle, _ = masked_explain(resnet, x, composite, {"layer3": channel_mask(128, [7])},
                                   target=target)
        close(ce.relevance[:, i], oracle.relevance)


def test_resnet18_inner_convolution_excludes_the_bypass(resnet):
    # layer4.1.conv2 feeds ``out += identity`` (in place); its conditional heatmap is
    # the relevance through the convolution: the masked backward minus the bypass.
    # float64: the oracle is a difference of two nearly equal maps
    resnet = copy.deepcopy(resnet).double()
    composite = EpsilonPlusFlat(canonizers=[MergeBatchNorm()])
    torch.manual_seed(4)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    layer, consumer = "layer4.1.conv2", "layer4.1.bn2"
    ce = crp.attribute(resnet, x, composite, [{layer: [5]}, {layer: list(range(512))}])
    bypass, _ = masked_explain(resnet, x, composite, {consumer: torch.zeros(1, 512, 1, 1)})
    oracle, _ = masked_explain(resnet, x, composite, {consumer: channel_mask(512, [5])})
    close(ce.relevance[:, 0], oracle.relevance - bypass.relevance)
    e = lrp.explain(resnet, x, composite, record=[layer])
    close(ce.relevance[:, 1], e.relevance - bypass.relevance)
    close(ce.relevance[:, 1].sum(), e.layer_relevance[layer].sum(), tol=1e-4)


def test_resnet18_attribution_graph(resnet):
    composite = EpsilonGammaBox(-3.0, 3.0, canonizers=[MergeBatchNorm()])
    torch.manual_seed(3)
    x = torch.randn(1, 3, 32, 32)
    root = crp.top_concepts(resnet, x, composite, "layer4", k=1, heatmaps=False)
    c = int(root.ids[0, 0])
    graph = crp.attribution_graph(resnet, x, composite, "layer4", c, ["layer3", "layer2"], k=2)
    assert [n.depth for n in graph.nodes] == [0, 1, 1, 2, 2, 2, 2]
    close(torch.tensor(graph.nodes[0].relevance), root.relevance[0, 0])
    # children of the root: relevance at layer3 of what flows through layer4[c]
    _, cap = masked_explain(resnet, x, composite, {"avgpool": channel_mask(512, [c])},
                            capture=["layer4"])
    per_channel = cap["layer4"].sum((2, 3))[0]
    top = per_channel.topk(2)
    kids = [graph.nodes[i] for i in graph.nodes[0].children]
    assert [k.concept for k in kids] == top.indices.tolist()
    close(torch.tensor([k.relevance for k in kids]), top.values)
    close(torch.tensor([k.share for k in kids]), top.values / graph.nodes[0].relevance)
    # grandchildren: through layer4[c] and then layer3[child]
    child = kids[0]
    _, cap = masked_explain(resnet, x, composite, {"avgpool": channel_mask(512, [c]),
                                                   "layer4": channel_mask(256, [child.concept])},
                            capture=["layer3"])
    top = cap["layer3"].sum((2, 3))[0].topk(2)
    grand = [graph.nodes[i] for i in child.children]
    assert [g.concept for g in grand] == top.indices.tolist()
    close(torch.tensor([g.relevance for g in grand]), top.values)
    assert "layer4[" in str(graph) and "%" in str(graph)


# ----------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def digit_data():
    # the 60 held-out digits shipped with the package (no scikit-learn needed)
    x, labels = demo_inputs(60)
    return TensorDataset(x, labels)


def test_relevance_and_activation_maximization(digits, digit_data, tmp_path):
    composite = EpsilonPlus(canonizers=[MergeBatchNorm()])
    loader = DataLoader(digit_data, batch_size=64)
    refs = crp.collect_references(digits, loader, composite, ["features.8", "features.4"], n=5,
                                  target="label", cache_dir=tmp_path, progress=False)
    assert not refs.loaded and refs.path is not None and refs.path.is_file()
    x, y = digit_data.tensors
    e = lrp.explain(digits, x, composite, y, record=["features.8", "features.4"])
    with torch.no_grad():  # activations of the canonized conv = conv + batch norm
        a4 = digits.features[:6](x)
        a8 = digits.features[:10](x)
    for layer, act in (("features.8", a8), ("features.4", a4)):
        scores = {"relevance": e.layer_relevance[layer].sum((2, 3)),
                  "activation": act.amax((2, 3))}
        for mode, s in scores.items():
            top = s.T.topk(5, dim=1).values
            torch.testing.assert_close(refs.values[mode][layer], top, rtol=1e-4, atol=1e-6)
            # the stored indices hold those values (ties may pick other samples)
            torch.testing.assert_close(s.T.gather(1, refs.indices[mode][layer]), top,
                                       rtol=1e-4, atol=1e-6)
            assert torch.equal(refs.targets[mode][layer], y[refs.indices[mode][layer]])
    idx, val = refs.top("features.8", 3)
    assert len(idx) == 5 and torch.all(val[:-1] >= val[1:])
    # the same settings load the stored result; other settings or weights recompute
    again = crp.collect_references(digits, loader, composite, ["features.8", "features.4"], n=5,
                                   target="label", cache_dir=tmp_path, progress=False)
    assert again.loaded and again.key == refs.key
    assert torch.equal(again.indices["relevance"]["features.8"],
                       refs.indices["relevance"]["features.8"])
    other = crp.collect_references(digits, loader, composite, ["features.8"], n=5,
                                   target="label", cache_dir=tmp_path, progress=False)
    assert not other.loaded and other.key != refs.key
    changed = copy.deepcopy(digits)
    with torch.no_grad():
        changed.classifier[1].bias[0] += 1e-3
    third = crp.collect_references(changed, loader, composite, ["features.8"], n=5,
                                   target="label", cache_dir=tmp_path, progress=False)
    assert not third.loaded and third.key != other.key
    # reference samples: crops of the conditional heatmap of each reference
    samples = crp.reference_samples(digits, composite, refs, digit_data, "features.8", 3, n=3)
    assert [s.index for s in samples] == refs.top("features.8", 3)[0][:3].tolist()
    for s in samples:
        xs, ys = digit_data[s.index]
        oracle, _ = masked_explain(digits, xs[None], composite,
                                   {"features.9": channel_mask(64, [3])}, target=int(ys))
        t, left, b, r = s.box
        assert 0 <= t < b <= 32 and 0 <= left < r <= 32 and (b - t) >= 8 and (r - left) >= 8
        close(s.heatmap, oracle.relevance[0][..., t:b, left:r])
        assert torch.equal(s.image, xs[..., t:b, left:r])
        inside = oracle.relevance[0].sum(0).clamp(min=0)
        assert inside[t:b, left:r].sum() >= 0.79 * inside.sum()


def test_reference_loader_checks(digits, digit_data, tmp_path):
    shuffled = DataLoader(digit_data, batch_size=64, shuffle=True)
    with pytest.raises(TypeError, match="shuffle"):
        crp.collect_references(digits, shuffled, EpsilonPlus(), ["features.8"], cache_dir=False)
    with pytest.raises(ValueError, match="no module named 'features.80'"):
        crp.collect_references(digits, DataLoader(digit_data), EpsilonPlus(), ["features.80"],
                               cache_dir=False)


def test_atlas_example(tmp_path):
    spec = importlib.util.spec_from_file_location("crp_atlas", ROOT / "examples" / "crp_atlas.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    written = example.main(["--out", str(tmp_path), "--refs", "3", "--concepts", "3",
                            "--references", "samples"])
    assert written.name == "crp_atlas.png" and written.parent == tmp_path
    with Image.open(written) as picture:
        assert picture.format == "PNG" and picture.size[0] > 200 and picture.size[1] > 200
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.std() > 10  # not blank
    assert any(tmp_path.glob("cache/references-*/references.npz"))


# ----------------------------------------------------------------------------- hygiene
def test_model_unchanged_and_clear_errors(digits):
    composite = COMPOSITES["EpsilonGammaBox"]()
    model = copy.deepcopy(digits)
    state = frozen(model)
    x, _ = demo_inputs(2)
    crp.attribute(model, x, composite, [{"features.8": [1]}], record=["features.4"])
    crp.top_concepts(model, x, composite, "features.8", k=2)
    crp.attribute(model, x, composite, [{"features.8": [1]}], batch_size=1)
    bad = [
        (ValueError, "no module named 'features.88'", dict(conditions=[{"features.88": [1]}])),
        (ValueError, r"concept id\(s\) \[64\] out of range for layer 'features.8'",
         dict(conditions=[{"features.8": [64]}])),
        (ValueError, r"concept id\(s\) \[-1\]", dict(conditions=[{"features.8": [-1]}])),
        (TypeError, "must be ints", dict(conditions=[{"features.8": [1.5]}])),
        (ValueError, "not below the conditioned layers",
         dict(conditions=[{"features.4": [1]}], record=["features.8"])),
        (ValueError, "target out of range", dict(conditions=[{"features.8": [1], "y": 10}])),
        (ValueError, "no conditions", dict(conditions=[])),
    ]
    for error, message, kwargs in bad:
        with pytest.raises(error, match=message):
            crp.attribute(model, x, composite, **kwargs)
        no_hooks(model)
        same_state(model, state)
    with pytest.raises(ValueError, match="forward failed"):
        crp.attribute(model, torch.randn(2, 3, 32, 32), composite, [{"features.8": [1]}])
    with pytest.raises(ValueError, match="out of range"):
        crp.attribution_graph(model, x[:1], composite, "features.8", 70, ["features.4"])
    with pytest.raises(ValueError, match="no relevance flows"):
        crp.attribution_graph(model, x[:1], composite, "features.4", 1, ["features.8"])
    no_hooks(model)
    same_state(model, state)
    assert all(p.requires_grad for p in model.parameters())


def test_condition_parsing():
    a = crp.Condition.parse({"features.8": 3, "y": [2]})
    b = crp.Condition({"features.8": [3]}, target=2)
    assert a == b and a.layers == ("features.8",)
    assert crp.Condition.parse({"a": torch.tensor([1, 2])}).concepts == {"a": (1, 2)}
    with pytest.raises(TypeError):
        crp.Condition.parse([("a", 1)])
    with pytest.raises(ValueError, match="names no concept"):
        crp.Condition({"a": []})
