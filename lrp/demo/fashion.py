"""A small residual CNN for Fashion-MNIST product photos, shipped with the package.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT license) has 70,000 grayscale 28x28
photographs of Zalando articles in 10 classes (:data:`CLASS_NAMES`), split 60,000 /
10,000 into training and test set.  The images are inverted product photos: the
article is bright on a black background.  The weights
(``lrp/assets/fashion_cnn.pt``), the training record with the accuracy on the 10,000
test images (``lrp/assets/fashion_cnn.json``) and 60 test images, 6 per class
(``lrp/assets/fashion_samples.npz``), are package data; ``scripts/train_fashion.py``
made them from Debian's ``dataset-fashion-mnist`` (:func:`load_fashion_mnist` reads
its files).

:class:`FashionCNN` has BatchNorm after every convolution and three residual blocks,
so explaining it exercises :class:`lrp.canonizers.MergeBatchNorm` and the proportional
split of relevance at residual sums.

Preprocessing (the same in training, :func:`fashion_inputs` and :func:`preprocess`):
``uint8`` pixels divided by 255, then ``(x - MEAN) / STD`` with the training set's
pixel mean and standard deviation (rounded).

Example
-------
>>> from lrp import explain
>>> from lrp.canonizers import MergeBatchNorm
>>> from lrp.composites import EpsilonGammaBox
>>> from lrp.demo.fashion import load_fashion_model, fashion_inputs, LOW, HIGH
>>> model = load_fashion_model()
>>> x, labels = fashion_inputs(10)
>>> explanation = explain(model, x, EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()]))
>>> explanation.relevance.shape
torch.Size([10, 1, 28, 28])
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
from PIL import Image
from torch import Tensor, nn

from .base import DATA_DIR, ShippedModel, gray_input, normalize_gray

__all__ = [
    "FashionCNN",
    "ResidualBlock",
    "MODEL",
    "CLASS_NAMES",
    "load_fashion_model",
    "fashion_inputs",
    "fashion_info",
    "prepare_fashion",
    "preprocess",
    "load_fashion_mnist",
    "read_idx",
    "DATASET_DIR",
    "MEAN",
    "STD",
    "LOW",
    "HIGH",
    "SIZE",
    "WEIGHTS",
    "INFO",
    "SAMPLES",
]

#: The trained ``state_dict`` of :class:`FashionCNN`.
WEIGHTS = DATA_DIR / "fashion_cnn.pt"
#: Training record: test accuracy, split, preprocessing, training set-up.
INFO = DATA_DIR / "fashion_cnn.json"
#: Held-out test photos: ``images`` (``uint8`` 28x28), ``labels``, ``index`` in the test set.
SAMPLES = DATA_DIR / "fashion_samples.npz"
#: Where Debian's ``dataset-fashion-mnist`` puts the files (``$LRP_FASHION_MNIST`` overrides).
DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")

#: The ten classes, in output order.
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
#: Input height and width.
SIZE = 28
#: Normalization of the ``[0, 1]`` pixels (training-set mean and std, rounded).
MEAN = 0.286
STD = 0.353
#: The normalized values of black and white pixels (input bounds for EpsilonGammaBox).
LOW = (0.0 - MEAN) / STD
HIGH = (1.0 - MEAN) / STD


class ResidualBlock(nn.Module):
    """``relu(x + bn2(conv2(relu(bn1(conv1(x))))))`` with 3x3 convolutions that keep
    the shape (He et al. 2016's basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """The block's output, of the input's shape."""
        return self.relu2(x + self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


class FashionCNN(nn.Module):
    """A residual CNN for 28x28 grayscale photos (121k parameters).

    ``stem`` (Conv-BN-ReLU, 16 channels), then two stages of a :class:`ResidualBlock`,
    a 2x2 max pooling and a Conv-BN-ReLU that widens the channels (16 -> 32 -> 64;
    28 -> 14 -> 7 pixels), a third residual block, global average pooling and a
    linear head.  Downsampling is by max pooling, not by strided convolutions, which
    would print a checkerboard into the heatmaps.

    Parameters
    ----------
    num_classes
        Number of outputs.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def conv_bn(c_in: int, c_out: int) -> list:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU()]

        widths = (16, 32, 64)
        self.stem = nn.Sequential(*conv_bn(1, widths[0]))
        self.features = nn.Sequential(
            *[nn.Sequential(ResidualBlock(c_in), nn.MaxPool2d(2), *conv_bn(c_in, c_out))
              for c_in, c_out in zip(widths, widths[1:])],
            ResidualBlock(widths[-1]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1], num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of a normalized ``(N, 1, 28, 28)`` batch."""
        return self.classifier(self.pool(self.features(self.stem(x))))


def load_fashion_model() -> FashionCNN:
    """The trained Fashion-MNIST CNN, in eval mode, on the CPU (a fresh instance).

    Raises
    ------
    FileNotFoundError
        If the package data is missing.
    """
    return MODEL.load()  # type: ignore[return-value]


def fashion_info() -> Dict[str, Any]:
    """The training record (a copy of ``fashion_cnn.json``): ``accuracy`` on the
    10,000 test images, ``n_test``, ``split``, ``preprocessing``, ``training``."""
    return MODEL.info()


def prepare_fashion(images: np.ndarray) -> Tensor:
    """``(N, 28, 28)`` ``uint8`` Fashion-MNIST images to normalized ``(N, 1, 28, 28)``
    float32 inputs."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"expected (N, {SIZE}, {SIZE}) images, got shape {images.shape}")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return normalize_gray(images.astype(np.float32) / scale, MEAN, STD)


def fashion_inputs(n: int = 8) -> Tuple[Tensor, Tensor]:
    """Held-out test photos (never seen in training), classes cycling 0..9.

    Parameters
    ----------
    n
        How many, from 1 to 60.

    Returns
    -------
    x : torch.Tensor
        ``(n, 1, 28, 28)`` normalized inputs.
    labels : torch.Tensor
        ``(n,)`` int64 true classes (names in :data:`CLASS_NAMES`).
    """
    return MODEL.inputs(n)


def preprocess(image: Union[Image.Image, np.ndarray, Tensor],
               invert: Optional[bool] = None) -> Tensor:
    """Any product photo to a ``(1, 1, 28, 28)`` input for :class:`FashionCNN`.

    Parameters
    ----------
    image
        A PIL image or an array/tensor, converted to grayscale in ``[0, 1]`` as
        :func:`lrp.demo.gray_pixels` does (16-bit images by their bit depth).
    invert
        The model was trained on bright articles on black.  ``None`` (default)
        inverts the photo when its border is mostly bright (an article on a white
        background); ``True``/``False`` force it.

    Returns
    -------
    torch.Tensor
        Resized bilinearly to 28x28 and normalized with :data:`MEAN` and :data:`STD`.
    """
    return gray_input(image, invert, (SIZE, SIZE), MEAN, STD)


# --------------------------------------------------------------------------- dataset files
def read_idx(path: Union[str, "os.PathLike[str]"]) -> np.ndarray:
    """Read an IDX file (the MNIST format, gzipped or not) as a numpy array.

    The header is two zero bytes, a type code (``0x08`` for ``uint8``), the number of
    dimensions, and one big-endian ``uint32`` size per dimension; the data follow.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {array.size} bytes")
    return array.reshape(shape)


def load_fashion_mnist(split: str = "test", root: Optional[Union[str, "os.PathLike[str]"]] = None
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST images and labels of one split, from local files.

    Parameters
    ----------
    split
        ``"train"`` (60,000) or ``"test"`` (10,000).
    root
        Folder with ``train-images-idx3-ubyte.gz`` and the other three files.
        Default: ``$LRP_FASHION_MNIST``, else :data:`DATASET_DIR` (where
        ``apt-get install dataset-fashion-mnist`` puts them).  Nothing is downloaded.

    Returns
    -------
    images : numpy.ndarray
        ``(N, 28, 28)`` ``uint8``.
    labels : numpy.ndarray
        ``(N,)`` ``uint8``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(root or os.environ.get("LRP_FASHION_MNIST") or DATASET_DIR)
    prefix = "train" if split == "train" else "t10k"
    files = [folder / f"{prefix}-{kind}-idx{n}-ubyte.gz" for kind, n in (("images", 3), ("labels", 1))]
    for file in files:
        if not file.is_file() and not file.with_suffix("").is_file():
            raise FileNotFoundError(f"Fashion-MNIST file {file} not found; install Debian's "
                                    "dataset-fashion-mnist or set LRP_FASHION_MNIST")
    images, labels = (read_idx(f if f.is_file() else f.with_suffix("")) for f in files)
    return images, labels


#: The Fashion-MNIST model in the registry of :mod:`lrp.demo` (``lrp demo --model fashion``).
MODEL = ShippedModel(
    name="fashion", title="FashionCNN (Fashion-MNIST)", architecture=FashionCNN,
    weights=WEIGHTS, record=INFO, samples=SAMPLES, class_names=CLASS_NAMES, size=(SIZE, SIZE),
    mean=(MEAN,), std=(STD,), prepare=prepare_fashion, preprocess=preprocess, noun="photo",
    trained_by="scripts/train_fashion.py")
