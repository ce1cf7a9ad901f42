"""Identities of the ratio engine, attach/detach hygiene, re-entrancy and the audit."""
import copy
import math
import warnings

import pytest
import torch
from torch import nn

import lrp
from lrp import rules as R
from lrp.audit import CoverageError
from lrp.composites import (Composite, EpsilonGammaBox, EpsilonPlus, GlobalTypeMap, Linear,
                            LayerMap)

torch.manual_seed(0)


def relu_net(bias=True):
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 16, bias=bias), nn.ReLU(),
        nn.Linear(16, 5, bias=bias),
    ).double().eval()


def everywhere(rule):
    return Composite(GlobalTypeMap([(Linear, rule)]))


def grad_times_input(model, x, target):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)
    return g * x


def test_lrp0_equals_gradient_times_input():
    model = relu_net()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    e = lrp.explain(model, x, everywhere(R.Zero()))
    torch.testing.assert_close(e.relevance, grad_times_input(model, x, e.target),
                               rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("rule", [R.Zero(), R.Epsilon(0.0), R.ZPlus(0.0), R.Gamma(0.25, 0.0),
                                  R.AlphaBeta(2, 1, 0.0)])
def test_exact_conservation_bias_free(rule):
    model = relu_net(bias=False)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    e = lrp.explain(model, x, everywhere(rule), layer_sums=True)
    logit = e.output.gather(1, e.target[:, None])[:, 0]
    torch.testing.assert_close(e.conservation(), logit, rtol=1e-5, atol=1e-10)
    for name, sums in e.layer_sums.items():
        torch.testing.assert_close(sums, logit, rtol=1e-5, atol=1e-10, msg=name)


def test_normalized_output_relevance_sums_to_one():
    model = relu_net(bias=False)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    e = lrp.explain(model, x, everywhere(R.Epsilon(0.0)), output_relevance="normalized")
    torch.testing.assert_close(e.conservation(), torch.ones(2, dtype=torch.float64))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False)
        self.b = nn.Linear(4, 4, bias=False)
        self.head = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        return self.head(self.a(x) + self.b(x))


def test_residual_sum_splits_proportionally():
    model = Residual().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    e = lrp.explain(model, x, everywhere(R.Epsilon(0.0)), record=["a", "b", "head"])
    ra, rb, rh = (e.layer_relevance[k] for k in ("a", "b", "head"))
    with torch.no_grad():
        za, zb = model.a(x), model.b(x)
    c = e.layer_relevance["head"]  # relevance at the output (only the target entry)
    assert rh.shape == c.shape
    # relevance at the sum's output, through the head by LRP-0
    w = model.head.weight
    s = (za + zb)
    r_sum = s * ((rh / (s @ w.T)) @ w)
    torch.testing.assert_close(ra, r_sum * za / s)
    torch.testing.assert_close(rb, r_sum * zb / s)
    torch.testing.assert_close(ra + rb, r_sum)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.shared(torch.relu(self.shared(x)))))


def test_module_called_twice_matches_unrolled():
    model = Twice().double()
    unrolled = nn.Sequential(copy.deepcopy(model.shared), nn.ReLU(), copy.deepcopy(model.shared),
                             nn.ReLU(), copy.deepcopy(model.head)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    composite = everywhere(R.Gamma(0.5))
    e1 = lrp.explain(model, x, composite, target=1)
    e2 = lrp.explain(unrolled, x, composite, target=1)
    torch.testing.assert_close(e1.relevance, e2.relevance)


def test_interleaved_forward_backward_passes():
    model = relu_net()
    composite = EpsilonPlus()
    x1 = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    x2 = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with composite.attached(model):
        a = x1.clone().requires_grad_(True)
        b = x2.clone().requires_grad_(True)
        oa, ob = model(a), model(b)  # two forwards, then the backwards in reverse order
        (gb,) = torch.autograd.grad(ob[:, 0].sum(), b)
        (ga,) = torch.autograd.grad(oa[:, 0].sum(), a)
    torch.testing.assert_close(ga * x1, lrp.explain(model, x1, composite, target=0).relevance)
    torch.testing.assert_close(gb * x2, lrp.explain(model, x2, composite, target=0).relevance)


def test_several_targets_share_one_forward():
    model = relu_net()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    composite = EpsilonGammaBox(-3.0, 3.0)
    targets = torch.tensor([[0, 2], [1, 3], [4, 0]])
    calls = []
    h = model.register_forward_hook(lambda *a: calls.append(1))
    e = lrp.explain(model, x, composite, target=targets)
    h.remove()
    assert e.relevance.shape == (3, 2, 3, 8, 8)
    for k in range(2):
        single = lrp.explain(model, x, composite, target=targets[:, k]).relevance
        torch.testing.assert_close(e.relevance[:, k], single)
    assert len(calls) == 1 + 1  # the forward, plus one sample for the execution order


class _Residual(nn.Module):
    """conv2 feeds a residual sum: relevance on its negative outputs (non-rectified)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 5))

    def forward(self, x):
        return self.head(x + self.conv2(torch.relu(self.conv1(x))))


def test_several_targets_on_a_residual_branch_equal_separate_runs():
    torch.manual_seed(5)
    model = _Residual().double().eval()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    composite = EpsilonGammaBox(-3.0, 3.0)
    targets = torch.tensor([[0, 2, 4]] * 3)
    e = lrp.explain(model, x, composite, target=targets, audit="off")
    for k in range(3):
        single = lrp.explain(model, x, composite, target=targets[:, k], audit="off").relevance
        torch.testing.assert_close(e.relevance[:, k], single)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_hooks_removed_after_exception_and_model_unchanged():
    model = relu_net()
    model[0].weight.requires_grad_(False)
    before = state(model)
    flags = [p.requires_grad for p in model.parameters()]
    composite = EpsilonGammaBox(-3.0, 3.0)
    with pytest.raises(ValueError):
        lrp.explain(model, torch.randn(2, 3, 7, dtype=torch.float64), composite)
    with pytest.raises(RuntimeError, match="boom"):
        with composite.attached(model, torch.randn(1, 3, 8, 8, dtype=torch.float64)):
            raise RuntimeError("boom")
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert "forward" not in vars(m)
    after = state(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())


def test_inplace_activation_gets_identity_rule_and_is_restored():
    model = nn.Sequential(nn.Linear(4, 4), nn.SiLU(inplace=True), nn.Linear(4, 2)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    composite = Composite(GlobalTypeMap([(nn.SiLU, R.Pass()), (nn.Linear, R.Epsilon(0.0))]))
    e = lrp.explain(model, x, composite, target=0, record=["1", "2"])
    assert model[1].inplace is True
    r_out = e.layer_relevance["2"]
    with torch.no_grad():
        h = model[1](model[0](x).clone())
    # relevance at the SiLU input equals relevance at its output (identity rule)
    w = model[2].weight
    r_silu = h * ((r_out / model[2](h)) @ w)
    torch.testing.assert_close(e.layer_relevance["1"], r_silu)


def test_audit_reports_functional_nonlinearity():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            h = self.fc(x)
            return self.out(torch.sigmoid(h) * h)

    model = Net()
    composite = everywhere(R.Epsilon())
    with pytest.raises(CoverageError, match="Sigmoid"):
        lrp.explain(model, torch.randn(2, 4), composite, audit="strict")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = lrp.explain(model, torch.randn(2, 4), composite)
    ops = {f.op for f in e.audit.uncovered}
    assert {"Sigmoid", "Mul"} <= ops
    assert any("Sigmoid" in str(w.message) for w in caught)


def test_audit_clean_on_relu_network_and_reports_unused_ruled_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.unused = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    e = lrp.explain(relu_net(), torch.randn(1, 3, 8, 8, dtype=torch.float64),
                    everywhere(R.Epsilon()), audit="strict")
    assert e.audit.ok
    with pytest.warns(UserWarning, match="unused"):
        e = lrp.explain(Net(), torch.randn(1, 4), everywhere(R.Epsilon()))
    assert e.audit.never_fired == ["unused"]


@pytest.mark.parametrize("case", ["nan", "inf", "inf-inf", "overflow", "finite"])
def test_check_inputs_is_the_elementwise_check(case):
    """The sum-first shortcut refuses exactly what the element-wise definition refuses,
    also when a finite input's sum overflows (float16: 70000 ones)."""
    from lrp.targets import check_inputs
    x = torch.ones(2, 35000, dtype=torch.float16)
    if case == "nan":
        x[1, 7] = float("nan")
    elif case == "inf":
        x[0, 3] = float("inf")
    elif case == "inf-inf":
        x[0, 3], x[1, 4] = float("inf"), float("-inf")
    if case == "overflow":
        assert not torch.isfinite(x.sum())  # the shortcut's fallback is exercised
    refused = not all(math.isfinite(v) for v in x.flatten().tolist())
    if refused:
        with pytest.raises(ValueError, match="NaN or infinite"):
            check_inputs(x)
    else:
        check_inputs(x)


def test_bad_inputs_give_clear_errors():
    model = relu_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    comp = everywhere(R.Epsilon())
    with pytest.raises(ValueError, match="out of range"):
        lrp.explain(model, x, comp, target=5)
    with pytest.raises(ValueError, match="targets for a batch"):
        lrp.explain(model, x, comp, target=[1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        lrp.explain(model, x * float("nan"), comp)
    with pytest.raises(ValueError, match="shape"):
        lrp.explain(model, torch.randn(2, 4, 8, 8, dtype=torch.float64), comp)
    with pytest.raises(ValueError, match="no rule"):
        lrp.explain(model, x, Composite(GlobalTypeMap([(nn.LSTM, R.Epsilon())])))
    with pytest.raises(ValueError, match="alpha - beta"):
        R.AlphaBeta(2.0, 0.5)
    with pytest.raises(ValueError, match="cannot be applied"):
        lrp.explain(model, x, Composite(LayerMap(2, R.Gamma())))


def test_strip_softmax_explains_logits():
    logits = relu_net()
    model = nn.Sequential(logits, nn.Softmax(dim=1)).eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    comp = everywhere(R.Epsilon())
    stripped = lrp.explain(model, x, comp, target=1, strip_softmax=True)
    plain = lrp.explain(logits, x, comp, target=1)
    torch.testing.assert_close(stripped.relevance, plain.relevance)
    torch.testing.assert_close(stripped.output, plain.output)
    assert "forward" not in vars(model[1])


def test_custom_output_relevance_function():
    model = relu_net(bias=False)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    r_out = torch.zeros(2, 5, dtype=torch.float64)
    r_out[:, 2] = 1.0
    r_out[:, 4] = -0.5
    e = lrp.explain(model, x, everywhere(R.Epsilon(0.0)), target=lambda out: r_out)
    assert e.target is None
    torch.testing.assert_close(e.conservation(), r_out.sum(1))
