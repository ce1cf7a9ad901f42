"""The shipped-model registry (lrp.demo) and the Fashion-MNIST model.

The accuracy claim is checked against what ships: the recorded test accuracy, and
the shipped held-out photos re-classified here.  ``lrp demo --model fashion`` runs
end to end in a subprocess, offline (a proxy that refuses every connection and an
empty torch hub cache), within a minute.
"""
import copy
import gzip
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lrp
from lrp import demo
from lrp.canonizers import MergeBatchNorm
from lrp.composites import EpsilonGammaBox
from lrp.demo import fashion

#: What ``lrp.demo`` exported before it became a package of shipped models.
OLD_EXPORTS = ["DigitsCNN", "load_demo_model", "demo_inputs", "demo_info", "prepare_digits",
               "preprocess", "flatten_alpha", "MEAN", "STD", "LOW", "HIGH", "SIZE", "ACCURACY",
               "DATA_DIR", "WEIGHTS", "INFO", "SAMPLES"]
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"]


def test_lrp_demo_keeps_every_name_it_exported():
    for name in OLD_EXPORTS:
        assert hasattr(demo, name), name
    assert set(OLD_EXPORTS) <= set(demo.__all__)
    assert demo.LOW == (0 - demo.MEAN) / demo.STD and demo.SIZE == 32
    assert demo.WEIGHTS.name == "digits_cnn.pt" and demo.WEIGHTS.parent == demo.DATA_DIR


def test_registry():
    assert list(demo.MODELS) == ["digits", "fashion", "vit"]
    assert demo.shipped_model("demo") is demo.MODELS["digits"]
    assert demo.shipped_model("fashion") is fashion.MODEL
    with pytest.raises(KeyError, match="available: digits, fashion, vit"):
        demo.shipped_model("resnet")
    with pytest.raises(ValueError, match="already registered"):
        demo.register(fashion.MODEL)
    assert fashion.MODEL.class_names == tuple(NAMES)
    assert fashion.MODEL.low == pytest.approx((0 - 0.286) / 0.353)
    assert fashion.MODEL.high == pytest.approx((1 - 0.286) / 0.353)


def test_fashion_model_architecture_has_batchnorm_and_residual_blocks():
    model = fashion.load_fashion_model()
    assert not model.training
    assert 50_000 <= sum(p.numel() for p in model.parameters()) <= 200_000
    kinds = [type(m) for m in model.modules()]
    assert kinds.count(nn.BatchNorm2d) == kinds.count(nn.Conv2d) >= 8
    assert kinds.count(fashion.ResidualBlock) == 3
    block = model.features[-1]
    x = torch.randn(2, 64, 7, 7)
    manual = torch.relu(x + block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
    torch.testing.assert_close(block(x), manual)  # the block really adds its input


def test_fashion_accuracy_claim_against_what_ships():
    record = fashion.fashion_info()
    assert record["n_train"] == 60_000 and record["n_test"] == 10_000
    assert record["accuracy"] >= 0.90
    assert record["class_names"] == NAMES
    assert fashion.MODEL.accuracy == record["accuracy"]
    images, labels = fashion.MODEL.raw_samples()
    assert images.shape == (60, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == list(range(10)) * 6  # 6 per class, classes cycling
    with np.load(fashion.SAMPLES) as data:  # distinct test images, by test-set index
        assert len(set(data["index"].tolist())) == 60
    model = fashion.load_fashion_model()
    x = torch.from_numpy(((images / 255.0 - 0.286) / 0.353).astype(np.float32))[:, None]
    with torch.no_grad():
        correct = int((model(x).argmax(1) == torch.as_tensor(labels).long()).sum())
    assert correct == record["samples"]["correct"]
    # nearly all: at least 90 %, and as many as the recorded test accuracy leads to expect
    # (inside the central 99 % of Binomial(60, accuracy): 51 to 60 for 0.927)
    assert correct >= 54
    p, n = record["accuracy"], len(labels)
    below = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(correct + 1))
    assert 0.005 < below, "the shipped photos do worse than the recorded accuracy predicts"
    total = sum(p.stat().st_size for p in demo.DATA_DIR.iterdir())
    assert total < 1_000_000, f"package data {total} bytes"


def test_fashion_inputs_and_preprocess_match_the_training_pipeline():
    images, labels = fashion.MODEL.raw_samples()
    x, y = fashion.fashion_inputs(10)
    assert x.shape == (10, 1, 28, 28) and y.tolist() == list(range(10))
    expected = (images[:10, None].astype(np.float32) / 255 - 0.286) / 0.353
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    # a product photo on white (8-bit RGB and 16-bit gray) is inverted back
    photo = 255 - images[3]
    rgb = Image.fromarray(np.stack([photo] * 3, -1))
    np.testing.assert_allclose(fashion.preprocess(rgb)[0].numpy(), expected[3], atol=1e-5)
    deep = Image.fromarray(photo.astype(np.uint16) * 257)  # v * 257 / 65535 = v / 255
    assert deep.mode == "I;16"
    np.testing.assert_allclose(fashion.preprocess(deep)[0].numpy(), expected[3], atol=1e-5)
    with pytest.raises(ValueError, match="between 1 and 60"):
        fashion.fashion_inputs(61)


def _fold_batchnorm_by_hand(model: nn.Module) -> nn.Module:
    """A copy with every BatchNorm folded into the convolution before it and replaced by
    an identity: ``W' = W * g / sqrt(v + eps)``, ``b' = beta - m * g / sqrt(v + eps)``."""
    model = copy.deepcopy(model)

    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                          padding=conv.padding, bias=True)
        with torch.no_grad():
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused

    for module in list(model.modules()):
        if isinstance(module, fashion.ResidualBlock):
            module.conv1, module.bn1 = fold(module.conv1, module.bn1), nn.Identity()
            module.conv2, module.bn2 = fold(module.conv2, module.bn2), nn.Identity()
        elif isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i], module[i + 1] = fold(module[i], module[i + 1]), nn.Identity()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return model.eval()


def test_fashion_demo_exercises_merge_batchnorm_on_residual_blocks():
    """The shipped explanation (MergeBatchNorm) equals that of the model with its nine
    BatchNorms folded by hand; the rules cover every operation; the model is unchanged."""
    model = fashion.load_fashion_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, _ = fashion.fashion_inputs(10)
    explanation = lrp.explain(model, x, EpsilonGammaBox(fashion.LOW, fashion.HIGH,
                                                        canonizers=[MergeBatchNorm()]),
                              audit="strict")
    assert explanation.audit.ok
    folded = _fold_batchnorm_by_hand(model)
    torch.testing.assert_close(folded(x), model(x).detach(), atol=1e-4, rtol=1e-4)
    by_hand = lrp.explain(folded, x, EpsilonGammaBox(fashion.LOW, fashion.HIGH))
    scale = explanation.relevance.abs().amax()
    torch.testing.assert_close(explanation.relevance / scale, by_hand.relevance / scale,
                               atol=1e-4, rtol=0)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 9
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def test_read_idx_and_load_fashion_mnist_from_local_files(tmp_path, monkeypatch):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    labels = np.array([9, 0])
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(_idx(images))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))  # not gzipped
    got_images, got_labels = fashion.load_fashion_mnist("test", root=tmp_path)
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    monkeypatch.setenv("LRP_FASHION_MNIST", str(tmp_path))
    assert np.array_equal(fashion.load_fashion_mnist("train")[0], images)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fashion.load_fashion_mnist("test", root=tmp_path / "missing")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        fashion.read_idx(tmp_path / "bad")


def test_lrp_demo_fashion_end_to_end_offline_within_a_minute(tmp_path):
    env = dict(os.environ, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               TORCH_HOME=str(tmp_path / "torch-home"), PYTHONPATH=str(Path(lrp.__file__).parents[1]))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lrp", "demo", "--model", "fashion", "--out",
                           str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert seconds < 60
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 11  # one per class and the grid
    assert {p.name.split("_true-")[1].split("_pred")[0] for p in pngs if "_true-" in p.name} == {
        "t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
        "ankle-boot"}
    record = json.loads(fashion.INFO.read_text())
    assert f"held-out test accuracy {record['accuracy']:.4f} (10000 photos)" in proc.stdout
    assert "Traceback" not in proc.stderr and not (tmp_path / "torch-home").exists()
