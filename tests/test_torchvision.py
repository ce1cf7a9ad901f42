"""End to end on torchvision architectures, with no model-specific code.

Weights are random, with batch-norm statistics calibrated on random data so that
activations keep their scale.  Running means and BN shifts are then set to zero so
that the canonized models are bias-free: every rule of the presets conserves
relevance exactly there, which gives a sharp check (1e-3 relative) of residual sums,
concatenations, squeeze-excitation gates, identity rules and BN fusion together.
"""
import pytest
import torch
import torchvision
from torch import nn

import lrp
from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonGammaBox, EpsilonPlusFlat

MODELS = ["vgg16", "vgg16_bn", "resnet18", "resnet50", "densenet121", "mobilenet_v2",
          "efficientnet_b0"]


def bias_free_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    for m in norms:
        m.running_mean.zero_()
        m.bias.data.zero_()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None \
                and not _in_gate(model, m):
            m.bias.data.zero_()
    return model.eval()


def _in_gate(model, module):
    gates = [m for m in model.modules() if isinstance(m, torchvision.ops.SqueezeExcitation)]
    return any(module is sub for g in gates for sub in g.modules())


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return request.param, bias_free_model(request.param)


@pytest.mark.parametrize("make", [lambda: EpsilonGammaBox(-3.0, 3.0, canonizers=[MergeBatchNorm()]),
                                  lambda: EpsilonPlusFlat(canonizers=[MergeBatchNorm()])],
                         ids=["EpsilonGammaBox", "EpsilonPlusFlat"])
def test_preset_on_architecture(model, make):
    name, net = model
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, 64, 64)
    e = lrp.explain(net, x, make(), audit="strict")
    assert e.relevance.shape == x.shape
    assert torch.isfinite(e.relevance).all()
    logit = e.output.gather(1, e.target[:, None])[:, 0]
    error = ((e.conservation() - logit).abs() / logit.abs()).max().item()
    # SiLU passes relevance on at negative pre-activations, where the z+ / gamma
    # denominators of the next convolution can be tiny: the stabilizer absorbs ~0.5%.
    tolerance = 1e-2 if name.startswith("efficientnet") else 1e-3
    assert error < tolerance, f"{name}: relative conservation error {error:.2e}"
    assert e.relevance.abs().sum() > 0
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        plain = net(x)
    # float32 BN fusion changes rounding; compare on the scale of the logits
    torch.testing.assert_close(plain, e.output, rtol=1e-3, atol=5e-3 * plain.abs().max().item())
