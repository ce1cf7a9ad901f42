"""A small pretrained CNN for handwritten digits, shipped with the package.

The model classifies scikit-learn's bundled digits (``sklearn.datasets.load_digits``:
1797 grayscale 8x8 images of the digits 0-9, ink bright on a dark background) and
needs no download: its weights (``lrp/assets/digits_cnn.pt``), its test accuracy
(``lrp/assets/digits_cnn.json``) and a few held-out test digits
(``lrp/assets/digits_samples.npz``) are package data.  It was trained by
``scripts/train_demo.py``.

Preprocessing (the same in training, :func:`demo_inputs` and :func:`preprocess`):

1. pixel values to ``[0, 1]`` (the digits' ``0..16`` divided by 16; 8-bit images
   divided by 255),
2. resize to 32x32 with Pillow's bilinear filter on the float image,
3. normalize with the fixed ``(x - MEAN) / STD``, ``MEAN = 0.3``, ``STD = 0.32``
   (the pixel mean and standard deviation of the upsampled digits, rounded).

Example
-------
>>> from lrp import explain
>>> from lrp.canonizers import MergeBatchNorm
>>> from lrp.composites import EpsilonGammaBox
>>> from lrp.demo import load_demo_model, demo_inputs, LOW, HIGH
>>> model = load_demo_model()
>>> x, labels = demo_inputs(8)
>>> composite = EpsilonGammaBox(LOW, HIGH, canonizers=[MergeBatchNorm()])
>>> explanation = explain(model, x, composite)
>>> explanation.relevance.shape
torch.Size([8, 1, 32, 32])
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
from PIL import Image
from torch import Tensor, nn

from .base import DATA_DIR, ShippedModel, gray_input, normalize_gray, resize

__all__ = [
    "DigitsCNN",
    "MODEL",
    "load_demo_model",
    "demo_inputs",
    "demo_info",
    "prepare_digits",
    "preprocess",
    "MEAN",
    "STD",
    "LOW",
    "HIGH",
    "SIZE",
    "WEIGHTS",
    "INFO",
    "SAMPLES",
]

#: The trained ``state_dict`` of :class:`DigitsCNN`.
WEIGHTS = DATA_DIR / "digits_cnn.pt"
#: Training record: test accuracy, split and preprocessing.
INFO = DATA_DIR / "digits_cnn.json"
#: Held-out test digits: ``images`` (``uint8`` 8x8, values 0-16), ``labels``, ``index``.
SAMPLES = DATA_DIR / "digits_samples.npz"

#: Input height and width of the model.
SIZE = 32
#: Normalization of the ``[0, 1]`` pixel values: ``(x - MEAN) / STD``.
MEAN = 0.3
STD = 0.32
#: The normalized values of black (0) and white (1) pixels: the input bounds for
#: :func:`lrp.composites.EpsilonGammaBox`.
LOW = (0.0 - MEAN) / STD
HIGH = (1.0 - MEAN) / STD


class DigitsCNN(nn.Module):
    """Three Conv-BN-ReLU-MaxPool blocks and a linear head (34k parameters).

    Input ``(N, 1, 32, 32)``, normalized as described in :mod:`lrp.demo`; output
    ``(N, 10)`` logits.  The feature maps shrink 32 -> 16 -> 8 -> 4; the head is
    ``Flatten`` and ``Linear(64 * 4 * 4, 10)``.  Only ReLU non-linearities, so every
    layer has an LRP rule in the preset composites.

    Parameters
    ----------
    num_classes
        Number of outputs.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of a normalized ``(N, 1, 32, 32)`` batch."""
        return self.classifier(self.features(x))


def load_demo_model() -> DigitsCNN:
    """The pretrained digits CNN, in eval mode, on the CPU.

    Returns
    -------
    DigitsCNN
        A fresh instance each call (safe to modify).

    Raises
    ------
    FileNotFoundError
        If the package data is missing (e.g. a source checkout before running
        ``scripts/train_demo.py``).
    """
    return MODEL.load()  # type: ignore[return-value]


def demo_info() -> Dict[str, Any]:
    """The training record of the demo model (a copy of ``digits_cnn.json``).

    Returns
    -------
    dict
        Keys include ``accuracy`` (held-out test accuracy), ``n_test``, ``split``
        and ``preprocessing``.
    """
    return MODEL.info()


def prepare_digits(images: np.ndarray) -> Tensor:
    """Preprocess scikit-learn digits for the model.

    Parameters
    ----------
    images
        ``(N, 8, 8)`` array with the digits' values ``0..16`` (as in
        ``load_digits().images``).

    Returns
    -------
    torch.Tensor
        ``(N, 1, 32, 32)`` float32: scaled to ``[0, 1]``, resized bilinearly to
        32x32, normalized with :data:`MEAN` and :data:`STD`.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) digit images, got shape {images.shape}")
    unit = np.clip(images / 16.0, 0.0, 1.0)
    resized = [resize(im, (SIZE, SIZE)) for im in unit]
    return normalize_gray(np.stack(resized) if resized else np.zeros((0, SIZE, SIZE), np.float32),
                          MEAN, STD)


def demo_inputs(n: int = 8) -> Tuple[Tensor, Tensor]:
    """Held-out test digits, preprocessed as in training.

    The shipped samples are digits of the test split that the model never saw
    during training, ordered so that the classes cycle ``0, 1, ..., 9, 0, 1, ...``.

    Parameters
    ----------
    n
        How many, from 1 to the number shipped (60).

    Returns
    -------
    x : torch.Tensor
        ``(n, 1, 32, 32)`` normalized inputs.
    labels : torch.Tensor
        ``(n,)`` int64 true classes.
    """
    return MODEL.inputs(n)


def preprocess(image: Union[Image.Image, np.ndarray, Tensor],
               invert: Optional[bool] = None) -> Tensor:
    """Preprocess any digit image for the demo model.

    Parameters
    ----------
    image
        A PIL image (any mode; transparent pixels become white, 16-bit grayscale is
        scaled by its bit depth, see :func:`lrp.demo.gray_pixels`), or an
        array/tensor ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (RGB(A) is converted
        with the ITU-R 601 luma weights): ``uint8`` values are divided by 255,
        ``uint16`` by 65535, float values are taken to be in ``[0, 1]``.
    invert
        The model expects a bright digit on a dark background.  ``None`` (default)
        inverts the image when its border is mostly bright (a dark digit on white
        paper); ``True``/``False`` force it.

    Returns
    -------
    torch.Tensor
        ``(1, 1, 32, 32)`` float32, ready for the model: grayscale in ``[0, 1]``,
        resized bilinearly to 32x32, normalized with :data:`MEAN` and :data:`STD`.
    """
    return gray_input(image, invert, (SIZE, SIZE), MEAN, STD)


#: The digits model in the registry of :mod:`lrp.demo` (``lrp demo --model digits``).
MODEL = ShippedModel(
    name="digits", title="DigitsCNN (scikit-learn digits)", architecture=DigitsCNN,
    weights=WEIGHTS, record=INFO, samples=SAMPLES, class_names=tuple(str(k) for k in range(10)),
    size=(SIZE, SIZE), mean=(MEAN,), std=(STD,), prepare=prepare_digits, preprocess=preprocess,
    noun="digit", trained_by="scripts/train_demo.py")
