"""Composite primitives: precedence, execution order, presets and the rule tree."""
import pytest
import torch
from torch import nn

import lrp
from lrp import rules as R
from lrp.attach import execution_order
from lrp.canonizers import MergeBatchNorm
from lrp.composites import (Composite, Convolution, EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat,
                            EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat, ExcitationBackprop,
                            FirstLayerMap, FirstLayerTypeMap, FirstNTypeMap, GlobalMap,
                            GlobalTypeMap, GuidedBackprop, LastLayerMap, LastLayerTypeMap,
                            LayerMap, RangeMap, RangeTypeMap)


class Reordered(nn.Module):
    """Registration order (head, conv2, conv1) differs from execution order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4 * 4 * 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.head(x.flatten(1))


X = torch.randn(2, 1, 4, 4)


def resolve(composite, model=None):
    model = model or Reordered()
    return composite.resolve(model, execution_order(model, X))


def test_execution_order_not_registration_order():
    model = Reordered()
    assert execution_order(model, X) == ["conv1", "act", "conv2", "head"]
    mapping = resolve(Composite(FirstLayerTypeMap([(Convolution, R.Flat())]),
                                LastLayerTypeMap([(nn.Conv2d, R.ZPlus())])), model)
    assert set(mapping) == {"conv1", "conv2"}
    assert isinstance(mapping["conv1"], R.Flat) and isinstance(mapping["conv2"], R.ZPlus)


def test_later_primitives_override_earlier():
    mapping = resolve(Composite(GlobalTypeMap([(nn.Conv2d, R.Gamma()), (nn.Linear, R.Epsilon())]),
                                FirstLayerMap(R.Flat())))
    assert isinstance(mapping["conv1"], R.Flat)
    assert isinstance(mapping["conv2"], R.Gamma)
    mapping = resolve(Composite(FirstLayerMap(R.Flat()),
                                GlobalTypeMap([(nn.Conv2d, R.Gamma())])))
    assert isinstance(mapping["conv1"], R.Gamma)


def test_positional_primitives():
    eps = R.Epsilon()
    assert set(resolve(Composite(LayerMap(-1, eps)))) == {"head"}
    assert set(resolve(Composite(LayerMap(["conv2", 0], eps)))) == {"conv2", "conv1"}
    assert set(resolve(Composite(RangeMap(1, 3, eps)))) == {"act", "conv2"}
    assert set(resolve(Composite(RangeMap(0, 4, R.Gamma())))) == {"conv1", "conv2", "head"}
    assert set(resolve(Composite(LastLayerMap(R.Gamma())))) == {"head"}
    assert set(resolve(Composite(GlobalMap(R.ZPlus())))) == {"conv1", "conv2", "head"}
    assert set(resolve(Composite(FirstNTypeMap(3, [(nn.Conv2d, eps)])))) == {"conv1", "conv2"}
    assert set(resolve(Composite(FirstNTypeMap(2, [(nn.Conv2d, eps)])))) == {"conv1"}
    assert set(resolve(Composite(RangeTypeMap(1, 4, [(nn.Conv2d, eps)])))) == {"conv2"}
    with pytest.raises(ValueError, match="no module named"):
        resolve(Composite(LayerMap("nope", eps)))
    with pytest.raises(ValueError, match="out of range"):
        resolve(Composite(LayerMap(10, eps)))
    with pytest.raises(TypeError):
        GlobalTypeMap([(nn.Conv2d, "gamma")])


def test_type_map_first_matching_entry_wins():
    mapping = resolve(Composite(GlobalTypeMap([(nn.Conv2d, R.Gamma()), (nn.Module, R.Pass())])))
    assert isinstance(mapping["conv1"], R.Gamma)
    assert isinstance(mapping["act"], R.Pass)


def test_tree_prints_rules():
    text = EpsilonGammaBox(-1.0, 1.0).tree(Reordered(), X)
    assert "conv1: Conv2d" in text and "ZBox(low=-1, high=1)" in text
    assert "GeneralizedGamma(gamma=0.25)" in text and "Epsilon(epsilon=1e-06)" in text
    # registration order in the tree, rules by execution order
    assert text.index("head") < text.index("conv1")


@pytest.mark.parametrize("preset", [EpsilonGammaBox, EpsilonPlus, EpsilonAlpha2Beta1,
                                    EpsilonPlusFlat, EpsilonAlpha2Beta1Flat, ExcitationBackprop,
                                    GuidedBackprop])
def test_presets_run_and_take_canonizers(preset):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    composite = preset(canonizers=[MergeBatchNorm()])
    e = lrp.explain(model, X, composite, audit="strict")
    assert e.relevance.shape == X.shape and torch.isfinite(e.relevance).all()
    assert e.method == composite.name


def test_rule_names_in_preset_trees():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(),
                          nn.Linear(16, 3))
    flat = EpsilonAlpha2Beta1Flat().tree(model, X)
    assert "0: Conv2d" in flat and "Flat()" in flat and "AlphaBeta(alpha=2, beta=1)" in flat


def test_attached_without_example_resolves_on_first_forward():
    model = Reordered()
    composite = EpsilonPlusFlat()
    with composite.attached(model) as attachment:
        assert attachment.mapping is None
        x = X.clone().requires_grad_(True)
        out = model(x)
        assert isinstance(attachment.mapping["conv1"], R.Flat)
        out[:, 0].sum().backward()
    assert x.grad is not None
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_custom_rules_from_building_blocks():
    from lrp.rules import BasicRule

    class MyGamma(BasicRule):  # the README's example
        def __init__(self, gamma=0.5):
            super().__init__(epsilon=1e-6)
            self.gamma = gamma

        def modify_parameter(self, param, name):
            return param + self.gamma * param.clamp(min=0)

    class PositiveInput(BasicRule):
        def modify_input(self, a):
            return a.clamp(min=0)

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).double()
    x = X.double()
    mine = lrp.explain(model, x, Composite(GlobalTypeMap([(Convolution, MyGamma())])))
    ref = lrp.explain(model, x, Composite(GlobalTypeMap([(Convolution, R.Gamma(0.5))])))
    torch.testing.assert_close(mine.relevance, ref.relevance)
    # z+ on the input of a linear layer: R_j = a+_j sum_i W_ij R_i / (W a+ + b)_i
    lin = nn.Linear(4, 3).double()
    a = torch.randn(2, 4, dtype=torch.float64)
    e = lrp.explain(nn.Sequential(lin), a, Composite(GlobalTypeMap([(nn.Linear, PositiveInput(0.0))])),
                    target=0)
    ap = a.clamp(min=0)
    z = lin(a).detach()[:, 0]
    expected = ap * (lin.weight[0] * (z / (ap @ lin.weight[0] + lin.bias[0]))[:, None])
    torch.testing.assert_close(e.relevance, expected.detach())
