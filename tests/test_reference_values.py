"""Stored end-to-end reference values, so results cannot drift between versions.

The model and input are built from numpy's legacy ``RandomState`` (stable across
numpy and torch versions), in float64.  Regenerate (only after an intended change,
and say why in the commit) with ``python tests/test_reference_values.py --update``.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lrp
from lrp.canonizers import MergeBatchNorm
from lrp.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox,
                            EpsilonPlus, EpsilonPlusFlat, ExcitationBackprop, GuidedBackprop)

REFERENCE = Path(__file__).parent / "data" / "reference_values.json"
PRESETS = {
    "EpsilonGammaBox": lambda: EpsilonGammaBox(-2.0, 2.0, canonizers=[MergeBatchNorm()]),
    "EpsilonPlus": lambda: EpsilonPlus(canonizers=[MergeBatchNorm()]),
    "EpsilonPlusFlat": lambda: EpsilonPlusFlat(canonizers=[MergeBatchNorm()]),
    "EpsilonAlpha2Beta1": lambda: EpsilonAlpha2Beta1(canonizers=[MergeBatchNorm()]),
    "EpsilonAlpha2Beta1Flat": lambda: EpsilonAlpha2Beta1Flat(canonizers=[MergeBatchNorm()]),
    "ExcitationBackprop": lambda: ExcitationBackprop(canonizers=[MergeBatchNorm()]),
    "GuidedBackprop": lambda: GuidedBackprop(),
}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


def reference_model():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Block(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(24, 10), nn.ReLU(), nn.Linear(10, 5),
    ).double().eval()
    rng = np.random.RandomState(1234)
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            if tensor.dtype != torch.float64:
                continue
            values = rng.uniform(-0.5, 0.5, size=tuple(tensor.shape))
            if "running_var" in name:
                values = 1.0 + np.abs(values)
            tensor.copy_(torch.from_numpy(values))
    x = torch.from_numpy(rng.uniform(-2.0, 2.0, size=(2, 3, 8, 8)))
    return model, x


def summary(name):
    model, x = reference_model()
    e = lrp.explain(model, x, PRESETS[name](), target=[1, 3], audit="strict")
    r = e.relevance
    return {"sum": r.sum(dim=(1, 2, 3)).tolist(), "abs_sum": r.abs().sum().item(),
            "first": r.flatten()[:6].tolist(), "argmax": int(r.flatten().argmax())}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_reference_values(name):
    stored = json.loads(REFERENCE.read_text())[name]
    now = summary(name)
    assert now["argmax"] == stored["argmax"]
    for key in ("sum", "abs_sum", "first"):
        np.testing.assert_allclose(now[key], stored[key], rtol=1e-7, atol=1e-12, err_msg=key)


if __name__ == "__main__" and "--update" in sys.argv:
    REFERENCE.write_text(json.dumps({n: summary(n) for n in sorted(PRESETS)}, indent=1) + "\n")
    print(f"wrote {REFERENCE}")
