"""Tests of lrp.canonizers: exact outputs inside the scope, the model never changed."""
import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lrp.canonizers import (LayerNormAffine, LayerNormalization, MergeBatchNorm, SplitLayerNorm,
                            canonize, canonized)


# ----------------------------------------------------------------------------- helpers

def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, LayerNorm affine params."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.1 * torch.randn(n, generator=g))
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def snapshot(model: nn.Module):
    """Everything a canonizer must leave as it was."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [(name, id(p), p.requires_grad) for name, p in model.named_parameters()]
    modules = [(name, id(m)) for name, m in model.named_modules()]
    return state, params, modules


def assert_restored(model: nn.Module, snap) -> None:
    state, params, modules = snap
    now = model.state_dict()
    assert list(now) == list(state)
    for key, value in state.items():
        assert now[key].dtype == value.dtype and torch.equal(now[key], value), key
    assert [(n, id(p), p.requires_grad) for n, p in model.named_parameters()] == params
    assert [(n, id(m)) for n, m in model.named_modules()] == modules
    for m in model.modules():
        assert "forward" not in m.__dict__
        assert not any(k.startswith("_tensor_constant") for k in m.__dict__)
        assert not m._forward_hooks and not m._forward_pre_hooks


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def bn_names(model):
    return {n for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


# ----------------------------------------------------------------------------- torchvision

def _vgg16_bn():
    model = torchvision.models.vgg16_bn(weights=None)
    # the 25088x4096 classifier is irrelevant here and large in float64
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(512, 10)
    return model


def _densenet_expected(model):
    # conv0 -> norm0 and conv1 -> norm2 in every dense layer; norm1 of dense layers,
    # transition norms and norm5 follow a concatenation.
    return {"features.norm0"} | {n for n in bn_names(model) if n.endswith(".norm2")}


ARCHITECTURES = {
    # name: (constructor, input size, expected fused BatchNorms (None: all))
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), 64, None),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), 32, None),
    "densenet121": (lambda: torchvision.models.densenet121(weights=None), 32, _densenet_expected),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), 32, None),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(weights=None), 32, None),
    "vgg16_bn": (_vgg16_bn, 32, None),
}
EXPECTED_COUNTS = {"resnet18": 20, "resnet50": 53, "densenet121": 59, "mobilenet_v2": 52,
                   "efficientnet_b0": 49, "vgg16_bn": 13}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_merge_batchnorm_torchvision(arch):
    torch.manual_seed(0)
    build, size, expected = ARCHITECTURES[arch]
    model = randomize_norms(build()).double().eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        reference = model(x)
    snap = snapshot(model)

    with torch.no_grad(), canonized(model, [MergeBatchNorm()], x) as substitution:
        out = model(x)
        assert_restored(model, snap)  # nothing changes on the model while canonized
    fused_bns = {bn for _, bn in substitution.merged}
    want = bn_names(model) if expected is None else expected(model)
    assert fused_bns == want
    assert len(substitution.merged) == EXPECTED_COUNTS[arch]
    modules = dict(model.named_modules())
    for conv_name, bn_name in substitution.merged:
        assert modules[bn_name] in substitution.identity
        assert substitution.params[modules[conv_name]]["bias"] is not None
    # float64 checks the fusion math far below float32 noise (~1e-6 here)
    assert rel_err(out, reference) < 1e-10
    assert_restored(model, snap)
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_fused_parameters_match_the_formula():
    """W' = W s, b' = (b - mean) s + beta with s = gamma / sqrt(var + eps), written out."""
    torch.manual_seed(0)
    model = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).double().eval()
    conv, bn = model
    sub = canonize(model, [MergeBatchNorm()], torch.randn(1, 3, 6, 6, dtype=torch.float64))
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = sub.params[conv]
    torch.testing.assert_close(fused["weight"], conv.weight * s[:, None, None, None])
    torch.testing.assert_close(fused["bias"], (conv.bias - bn.running_mean) * s + bn.bias)
    assert not fused["weight"].requires_grad


def test_merge_batchnorm_float32_resnet18():
    torch.manual_seed(0)
    model = randomize_norms(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(1, 3, 64, 64)
    snap = snapshot(model)
    with torch.no_grad():
        reference = model(x)
        with canonized(model, [MergeBatchNorm()], x) as substitution:
            out = model(x)
    assert len(substitution.merged) == 20
    assert rel_err(out, reference) < 1e-4
    assert_restored(model, snap)


def test_parameters_and_flags_untouched():
    torch.manual_seed(0)
    model = randomize_norms(torchvision.models.resnet18(weights=None)).eval()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snap = snapshot(model)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    with canonized(model, [MergeBatchNorm()], x):
        model(x).sum().backward()  # parameters are constants inside the scope
    assert x.grad is not None
    assert all(p.grad is None for p in model.parameters())
    assert_restored(model, snap)
    assert model.conv1.bias is None
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters()}


def test_training_mode_raises():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    snap = snapshot(model)
    with pytest.raises(ValueError, match="eval"):
        with canonized(model, [MergeBatchNorm()], torch.randn(1, 3, 6, 6)):
            pass
    assert_restored(model, snap)


class _ResidualFromConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _ConvTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(self.conv(x)))


class _BatchNormTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.bn(x)


class _InPlaceBetween(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        y += x  # the conv output changes in place before the BatchNorm
        return self.bn(y)


@pytest.mark.parametrize("cls", [_ResidualFromConv, _ConvTwice, _BatchNormTwice, _InPlaceBetween])
def test_not_merged(cls):
    torch.manual_seed(0)
    model = randomize_norms(cls()).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        reference = model(x)
        with canonized(model, [MergeBatchNorm()], x) as substitution:
            assert substitution.merged == []
            assert torch.equal(model(x), reference)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5))

    def forward(self, x):
        x = self.block(x)
        if x.sum() > 0:  # fx could not trace this
            x = x * 2
        return self.head(x.mean(dim=(2, 3)))


def test_untraceable_model():
    torch.manual_seed(0)
    model = randomize_norms(_DataDependent()).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        reference = model(x)
    snap = snapshot(model)
    with torch.no_grad(), canonized(model, [MergeBatchNorm()], x) as substitution:
        assert substitution.merged == [("block.0", "block.1"), ("head.0", "head.1")]
        assert rel_err(model(x), reference) < 1e-5
    assert_restored(model, snap)


@pytest.mark.parametrize("layers, shape", [
    ((nn.Conv1d(3, 6, 3, groups=3, bias=False), nn.BatchNorm1d(6)), (2, 3, 10)),
    ((nn.Conv3d(3, 4, 2), nn.BatchNorm3d(4, affine=False)), (2, 3, 4, 4, 4)),
    ((nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6)), (2, 4, 5, 5)),
    ((nn.ConvTranspose1d(2, 3, 3, bias=False), nn.BatchNorm1d(3)), (2, 2, 7)),
    ((nn.Linear(5, 7), nn.BatchNorm1d(7)), (4, 5)),
])
def test_layer_types(layers, shape):
    torch.manual_seed(0)
    model = randomize_norms(nn.Sequential(*layers)).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    snap = snapshot(model)
    with torch.no_grad():
        reference = model(x)
        with canonized(model, [MergeBatchNorm()], x) as substitution:
            assert substitution.merged == [("0", "1")]
            assert rel_err(model(x), reference) < 1e-10
    assert_restored(model, snap)


def test_merge_twice_is_harmless():
    torch.manual_seed(0)
    model = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).double().eval()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    snap = snapshot(model)
    with torch.no_grad():
        reference = model(x)
        with canonized(model, [MergeBatchNorm(), MergeBatchNorm()], x) as substitution:
            assert substitution.merged == [("0", "1")]
            assert rel_err(model(x), reference) < 1e-10
    assert_restored(model, snap)


def test_batchnorm_without_running_stats_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert canonize(model, [MergeBatchNorm()], torch.randn(2, 3, 6, 6)).merged == []


def test_merge_needs_an_example_input():
    with pytest.raises(ValueError, match="example input"):
        canonize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval(), [MergeBatchNorm()])


def test_not_a_canonizer():
    with pytest.raises(TypeError, match="canonizers"):
        canonize(nn.Linear(2, 2), [object()])


# ----------------------------------------------------------------------------- LayerNorm

class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 8)
        self.shared = self.norm  # registered twice
        self.nobias = nn.LayerNorm((3, 8), bias=False)
        self.plain = nn.LayerNorm(8, elementwise_affine=False)

    def forward(self, x):
        x = self.proj(self.norm(x))
        return self.plain(self.nobias(self.shared(x)))


def _transformer():
    return nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32,
                                      dropout=0.0, batch_first=True)


@pytest.mark.parametrize("build, shape, names", [
    (_transformer, (2, 5, 16), ["norm1", "norm2"]),
    (_Block, (2, 3, 8), ["norm", "nobias"]),
])
def test_split_layernorm(build, shape, names):
    torch.manual_seed(0)
    model = randomize_norms(build()).eval()
    x = torch.randn(*shape, requires_grad=True)  # grad: no transformer fast path
    reference = model(x).detach()
    snap = snapshot(model)

    with canonized(model, [SplitLayerNorm()]) as substitution:
        out = model(x)
    assert sorted(substitution.virtual) == sorted(f"{n}.{i}" for n in names for i in (0, 1))
    for name in names:
        original = model.get_submodule(name)
        norm, affine = substitution.virtual[f"{name}.0"], substitution.virtual[f"{name}.1"]
        assert isinstance(norm, LayerNormalization) and isinstance(affine, LayerNormAffine)
        assert norm.normalized_shape == original.normalized_shape
        assert norm.eps == original.eps
        assert affine.weight is original.weight
        assert affine.bias is original.bias
        assert substitution.replace[original] is not None
    assert (out - reference).abs().max().item() < 1e-6
    assert_restored(model, snap)


def test_canonizers_combined():
    torch.manual_seed(0)
    model = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                                          nn.LayerNorm(4 * 4 * 4))).eval()
    x = torch.randn(2, 3, 6, 6)
    snap = snapshot(model)
    with torch.no_grad():
        reference = model(x)
        with canonized(model, [MergeBatchNorm(), SplitLayerNorm()], x) as substitution:
            assert substitution.merged == [("0", "1")] and sorted(substitution.virtual) == ["3.0", "3.1"]
            assert (model(x) - reference).abs().max().item() < 1e-5
    assert_restored(model, snap)
    with canonized(model, []):
        pass
    assert_restored(model, snap)
