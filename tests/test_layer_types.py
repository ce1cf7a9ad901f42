"""Rules on the other weighted layer types (Conv1d, Conv3d, ConvTranspose) and on a
transformer block, against the dense matrix of the layer taken by autograd."""
import pytest
import torch
from torch import nn

import lrp
from lrp import rules as R
from lrp.canonizers import SplitLayerNorm
from lrp.composites import Composite, EpsilonPlus, GlobalTypeMap, LayerMap

LAYERS = {
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, padding=1, stride=2), (2, 3, 9)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2, padding=1), (2, 2, 3, 3, 3)),
    # 1x1 with stride > 1 (ResNet's downsample) is evaluated on the sliced input
    "conv1d-1x1-stride3": (lambda: nn.Conv1d(3, 4, 1, stride=3), (2, 3, 10)),
    "conv2d-1x1-stride2": (lambda: nn.Conv2d(4, 6, 1, stride=2, groups=2), (2, 4, 7, 6)),
    "conv3d-1x1-stride": (lambda: nn.Conv3d(2, 3, 1, stride=(2, 1, 3), padding="valid"),
                          (2, 2, 5, 3, 4)),
    "convtranspose1d": (lambda: nn.ConvTranspose1d(3, 2, 3, stride=2, output_padding=1), (2, 3, 5)),
    "convtranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1), (2, 2, 4, 4)),
}


class Flat(nn.Module):
    """The layer followed by a flatten, so its outputs are the model outputs."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x).flatten(1)


def dense(layer, shape):
    """(outputs x inputs) matrix of the linear part of ``layer`` for one sample."""
    zero = torch.zeros(1, *shape[1:], dtype=torch.float64)

    def f(v):
        return (layer(v.view(1, *shape[1:])) - layer(zero)).flatten()
    return torch.autograd.functional.jacobian(f, zero.flatten())


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_gamma_against_dense_formula(kind):
    torch.manual_seed(3)
    make, shape = LAYERS[kind]
    layer = make().double()
    x = torch.rand(shape, dtype=torch.float64)
    model = Flat(layer)
    with torch.no_grad():
        z = model(x)
    r_out = torch.randn_like(z)
    gamma = 0.5
    e = lrp.explain(model, x, Composite(LayerMap("layer", R.Gamma(gamma, epsilon=0.0))),
                    target=lambda out: r_out, audit="off")
    W = dense(layer, shape)
    Wg = W + gamma * W.clamp(min=0)
    with torch.no_grad():  # the bias of every output position
        b = layer(torch.zeros(1, *shape[1:], dtype=torch.float64)).flatten()
    bg = b + gamma * b.clamp(min=0)
    xf = x.flatten(1)
    denom = xf @ Wg.T + bg
    expected = xf * ((r_out / denom) @ Wg)
    torch.testing.assert_close(e.relevance.flatten(1), expected, rtol=1e-8, atol=1e-10)


def test_lrp0_is_gradient_times_input_on_transposed_convolutions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(2, 4, 3, stride=2), nn.ReLU(),
                          nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    model(x)
    e = lrp.explain(model, x, Composite(GlobalTypeMap([((nn.Conv2d, nn.ConvTranspose2d,
                                                          nn.Linear), R.Zero())])))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, e.target[:, None]).sum(), xg)
    torch.testing.assert_close(e.relevance, g * x)


def test_transformer_block_layer_norm_rules_and_audit():
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    model = nn.Sequential(block, nn.Flatten(), nn.Linear(8 * 5, 3)).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    composite = EpsilonPlus(canonizers=[SplitLayerNorm()])
    e = lrp.explain(model, x, composite, audit="strict")
    # attention (MultiheadAttention's functional form) is decomposed inside the call,
    # and out_proj, whose weights it uses without calling the module, gets its rule
    assert e.audit.ok
    assert torch.isfinite(e.relevance).all()
    assert isinstance(block.norm1, nn.LayerNorm)  # restored
