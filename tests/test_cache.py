"""Prepared (rule) and fused (canonizer) parameters are reused only while valid."""
import torch
from torch import nn

import lrp
from lrp import rules as R
from lrp.cache import VersionKey
from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonGammaBox


def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def composite():
    return EpsilonGammaBox(-3.0, 3.0, canonizers=[MergeBatchNorm()])


def relevance(model, x, comp):
    return lrp.explain(model, x, comp, target=1, audit="off").relevance


def test_version_key():
    a, b = torch.ones(3), torch.ones(3)
    key = VersionKey(a, 0.5)
    assert key == VersionKey(a, 0.5)
    assert key != VersionKey(b, 0.5)       # another object, even if equal
    assert key != VersionKey(a, 0.25)      # another setting
    a.add_(1)
    assert key != VersionKey(a, 0.5)       # modified in place
    c = torch.ones(3)
    key = VersionKey(c)
    c.data = torch.zeros(3)
    assert key != VersionKey(c)            # storage swapped


def test_second_call_reuses_prepared_parameters(monkeypatch):
    model, x = make_model(), torch.randn(2, 3, 8, 8)
    comp = composite()
    first = relevance(model, x, comp)
    calls = []
    original = R.GeneralizedGamma.prepare
    monkeypatch.setattr(R.GeneralizedGamma, "prepare",
                        lambda self, m: calls.append(m) or original(self, m))
    second = relevance(model, x, comp)
    assert calls == []
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_changed_weights_and_statistics_invalidate():
    model, x = make_model(), torch.randn(2, 3, 8, 8)
    comp = composite()
    relevance(model, x, comp)
    with torch.no_grad():
        model[3].weight.mul_(-1.5)           # in place
        model[4].running_var.mul_(3.0)       # BN statistics of a fused pair
    model[8].weight.data = torch.randn(4, 8)  # storage swapped
    got = relevance(model, x, comp)
    fresh = relevance(model, x, composite())
    torch.testing.assert_close(got, fresh, rtol=0, atol=0)


def test_model_unchanged_and_cache_freed_with_composite():
    import gc
    import weakref
    model, x = make_model(), torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: id(v) for k, v in model.named_parameters()}
    comp = composite()
    relevance(model, x, comp)
    relevance(model, x, comp)
    assert {k: id(v) for k, v in model.named_parameters()} == params
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    fused = next(iter(comp.canonizers[0]._lrp_cache.values()))[1][0]
    ref = weakref.ref(fused)
    del comp, fused
    gc.collect()
    assert ref() is None


def test_batchnorm_pairs_found_once_per_model_structure(monkeypatch):
    from lrp import attach, canonizers
    probes = []
    run = attach.run_model
    monkeypatch.setattr(attach, "run_model", lambda m, x, **kw: probes.append(1) or run(m, x, **kw))
    model, x = make_model(), torch.randn(2, 3, 6, 6)
    comp = composite()
    first = relevance(model, x, comp)
    torch.testing.assert_close(relevance(model, x, comp), first)
    assert len(probes) == 1
    # a replaced module is a new structure: probed again, and the new layer is used
    model[3] = nn.Conv2d(8, 8, 3, padding=1).eval()
    with torch.no_grad():
        reference = model(x)
        with canonizers.canonized(model, [MergeBatchNorm()], x) as substitution:
            assert substitution.merged == [("0", "1"), ("3", "4")]
            torch.testing.assert_close(model(x), reference)
    assert len(probes) == 2
    second = relevance(model, x, comp)
    assert len(probes) == 2 and not torch.allclose(second, first)
    # a forward patched onto an instance changes what the structure holds
    model[2].forward = lambda t: t
    relevance(model, x, comp)
    assert len(probes) == 3
