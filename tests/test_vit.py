"""The shipped Vision Transformer (lrp.demo.vit) and ``lrp demo --model vit``.

The architecture is checked against attention written out by hand, the accuracy claim
against what ships (the record, and the shipped held-out photos re-classified here),
the explanation's coverage audit with both transformer presets, the command line's
default composite against the library preset called directly, and ``lrp demo --model
vit`` end to end in a subprocess, offline.
"""
import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lrp
from lrp import cli, demo
from lrp.cli.common import model_composite
from lrp.composites import CPLRP, AttnLRP
from lrp.demo import fashion, vit

#: The recorded test accuracy must reach this (what ``scripts/train_vit.py`` reached, rounded down).
ACCURACY_FLOOR = 0.86


@pytest.fixture(scope="module")
def model():
    return vit.load_vit_model()


def test_registered_with_the_cnn_s_data_and_transformer_rules():
    assert demo.shipped_model("vit") is vit.MODEL
    assert vit.MODEL.samples == fashion.SAMPLES  # the same held-out photos as the CNN
    assert vit.MODEL.class_names == fashion.CLASS_NAMES
    assert (vit.MODEL.mean, vit.MODEL.std, vit.MODEL.size) == ((fashion.MEAN,), (fashion.STD,), (28, 28))
    assert vit.MODEL.composite == "cp-lrp-gamma" and fashion.MODEL.composite == "epsilon-gamma-box"


def _attention_by_hand(attn: vit.Attention, x: torch.Tensor) -> torch.Tensor:
    """``proj(concat_h softmax(q_h k_h^T / sqrt(d)) v_h)`` with explicit matrices."""
    n, t, dim = x.shape
    d = dim // attn.heads
    w, b = attn.qkv.weight, attn.qkv.bias
    heads = []
    for h in range(attn.heads):
        q, k, v = (x @ w[j * dim + h * d: j * dim + (h + 1) * d].T + b[j * dim + h * d: j * dim + (h + 1) * d]
                   for j in range(3))
        heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), -1) @ v)
    return torch.cat(heads, -1) @ attn.proj.weight.T + attn.proj.bias


def test_architecture_is_a_vit_written_out(model):
    record = vit.MODEL.info()
    config = record["architecture"]
    assert (config["patch"], config["dim"], config["depth"], config["heads"]) == (4, 64, 4, 4)
    assert config["tokens"] == 1 + (28 // 4) ** 2
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    x, _ = fashion.fashion_inputs(3)
    with torch.no_grad():
        tokens = model.patch_embed(x).flatten(2).transpose(1, 2)
        # patch 0 is the top-left 4x4 pixels through the conv written as a dot product
        patch = x[:, 0, :4, :4].reshape(3, 16)
        torch.testing.assert_close(tokens[:, 0], patch @ model.patch_embed.weight.reshape(64, 16).T
                                   + model.patch_embed.bias)
        h = torch.cat([model.cls_token.expand(3, -1, -1), tokens], 1) + model.pos_embed
        for block in model.blocks:
            h = h + _attention_by_hand(block.attn, block.norm1(h))
            h = h + block.mlp[2](torch.nn.functional.gelu(block.mlp[0](block.norm2(h))))
        expected = model.head(model.norm(h)[:, 0])
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_accuracy_claim_against_what_ships(model):
    record = vit.MODEL.info()
    assert record["n_train"] == 60_000 and record["n_test"] == 10_000
    assert record["accuracy"] >= ACCURACY_FLOOR and vit.MODEL.accuracy == record["accuracy"]
    assert record["class_names"] == list(fashion.CLASS_NAMES)
    assert record["samples"]["file"] == fashion.SAMPLES.name
    # the weights ship as float16 and load into the float32 model
    stored = torch.load(vit.WEIGHTS, weights_only=True)
    assert all(v.dtype == torch.float16 for v in stored.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert vit.WEIGHTS.stat().st_size < 400_000
    images, labels = vit.MODEL.raw_samples()
    x = torch.from_numpy(((images / 255.0 - 0.286) / 0.353).astype(np.float32))[:, None]
    with torch.no_grad():
        correct = int((model(x).argmax(1) == torch.as_tensor(labels).long()).sum())
    assert correct == record["samples"]["correct"]
    # as many as the recorded accuracy leads to expect: not in the lowest 0.5 % of
    # Binomial(60, accuracy)
    p, n = record["accuracy"], len(labels)
    below = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(correct + 1))
    assert below > 0.005, "the shipped photos do worse than the recorded accuracy predicts"


@pytest.mark.parametrize("preset", [lambda: CPLRP(gamma=0.25), lambda: AttnLRP(gamma=0.25)],
                         ids=["CPLRP-gamma", "AttnLRP-gamma"])
def test_explanation_is_covered_by_rules(model, preset):
    """Every operation of the ViT (patch conv, LayerNorm, fused attention, GELU, the
    class-token concatenation) has a rule; the model is untouched."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, labels = fashion.fashion_inputs(10)
    explanation = lrp.explain(model, x, preset(), audit="strict")
    assert explanation.audit.ok
    assert explanation.relevance.shape == x.shape
    assert torch.isfinite(explanation.relevance).all()
    # relevance lies on the article more than on the black background
    on_article = (x > fashion.LOW + 0.1).float()
    r = explanation.relevance.clamp(min=0)
    share = (r * on_article).sum((1, 2, 3)) / r.sum((1, 2, 3))
    assert share.median() > on_article.mean((1, 2, 3)).median()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_command_line_default_is_the_preset_called_directly(tmp_path, monkeypatch, model):
    """``lrp demo --model vit`` without ``--composite`` renders exactly CPLRP(gamma=0.25)'s relevance."""
    args = argparse.Namespace(composite=None)
    model_composite(args, cli.load_model("vit"))
    assert args.composite == "cp-lrp-gamma"
    rendered = []
    monkeypatch.setattr("lrp.image.heatmap", lambda r, *a, **k: rendered.append(r) or
                        Image.new("RGB", (28, 28)))
    assert cli.main(["demo", "--model", "vit", "-n", "3", "--out", str(tmp_path)]) == 0
    x, _ = fashion.fashion_inputs(3)
    expected = lrp.explain(model, x, CPLRP(gamma=0.25)).relevance
    torch.testing.assert_close(torch.stack(rendered), expected)


def test_lrp_demo_vit_end_to_end_offline(tmp_path):
    env = dict(os.environ, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               TORCH_HOME=str(tmp_path / "torch-home"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(lrp.__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-m", "lrp", "demo", "--model", "vit", "--out",
                           str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 11 and (tmp_path / "out" / "grid.png") in pngs
    assert all(p.name.startswith("vit_") for p in pngs if p.name != "grid.png")
    assert "explained 10 held-out photos with CPLRP" in proc.stdout
    record = json.loads(vit.INFO.read_text())
    assert (f"model: FashionViT (Fashion-MNIST), held-out test accuracy {record['accuracy']:.4f} "
            "(10000 photos)") in proc.stdout
    assert "Traceback" not in proc.stderr and "warning" not in proc.stderr
    assert not (tmp_path / "torch-home").exists()
