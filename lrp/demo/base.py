"""What a shipped model is: :class:`ShippedModel`, and the image helpers its
preprocessing shares (grayscale conversion by bit depth, transparency, resizing)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

__all__ = ["ShippedModel", "DATA_DIR", "flatten_alpha", "gray_pixels", "resize", "gray_input"]

#: Directory of the package data (weights, training records, held-out samples).
DATA_DIR = Path(__file__).resolve().parent.parent / "assets"

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's convert("L")


@dataclass(frozen=True)
class ShippedModel:
    """A trained model that ships with the package, and everything needed to feed it.

    Parameters
    ----------
    name
        Registry key and command-line name (``lrp demo --model NAME``).
    title
        One line for messages, e.g. ``"FashionCNN (Fashion-MNIST)"``.
    architecture
        Builds the untrained model (the class, or a factory without arguments).
    weights, record, samples
        Package data: the ``state_dict`` (``.pt``), the training record (``.json``,
        with at least ``accuracy`` and ``n_test``) and the held-out samples (``.npz``
        with ``images`` in their stored form and ``labels``).
    class_names
        One name per output, in output order.
    size
        Input ``(height, width)``.
    mean, std
        Per-channel normalization of the ``[0, 1]`` pixels: ``(x - mean) / std``.
    prepare
        Stored sample images (as in ``samples``) to the model input ``(N, C, H, W)``.
    preprocess
        Any image (PIL image, array or tensor) to a ``(1, C, H, W)`` model input.
    noun
        What one sample is, for messages and file names (``"digit"``, ``"photo"``).
    trained_by
        The script that made the package data.
    composite
        The command-line name of the rule preset that explains it by default
        (``lrp demo``, ``lrp heatmap``, ``lrp inspect`` without ``--composite``).
    """

    name: str
    title: str
    architecture: Callable[[], nn.Module]
    weights: Path
    record: Path
    samples: Path
    class_names: Tuple[str, ...]
    size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    prepare: Callable[[np.ndarray], Tensor] = field(repr=False)
    preprocess: Callable[..., Tensor] = field(repr=False)
    noun: str = "sample"
    trained_by: str = ""
    composite: str = "epsilon-gamma-box"

    @property
    def channels(self) -> int:
        """Number of input channels."""
        return len(self.mean)

    @property
    def low(self) -> Union[float, Tensor]:
        """The normalized value of a black pixel (a float, or a per-channel tensor):
        the lower input bound for :class:`lrp.composites.EpsilonGammaBox`."""
        return self._bound(0.0)

    @property
    def high(self) -> Union[float, Tensor]:
        """The normalized value of a white pixel: the upper input bound."""
        return self._bound(1.0)

    def _bound(self, pixel: float) -> Union[float, Tensor]:
        values = [(pixel - m) / s for m, s in zip(self.mean, self.std)]
        return values[0] if len(values) == 1 else torch.tensor(values)

    def load(self) -> nn.Module:
        """The trained model, in eval mode, on the CPU (a fresh instance each call).

        Raises
        ------
        FileNotFoundError
            If the package data is missing (a source checkout before the training
            script ran).
        """
        if not self.weights.is_file():
            raise FileNotFoundError(f"the {self.name} model weights {self.weights} are missing; "
                                    f"run {self.trained_by} to create them")
        model = self.architecture()
        model.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
        return model.eval()

    def info(self) -> Dict[str, Any]:
        """The training record (a copy of the ``.json`` file): held-out accuracy,
        split, preprocessing, training set-up."""
        return json.loads(_read_record(self.record, self.trained_by))

    @property
    def accuracy(self) -> float:
        """Held-out test accuracy from the training record."""
        return float(self.info()["accuracy"])

    def inputs(self, n: int = 8) -> Tuple[Tensor, Tensor]:
        """Shipped held-out samples, preprocessed as in training.

        Parameters
        ----------
        n
            How many, from 1 to the number shipped; the classes cycle
            ``0, 1, ..., K-1, 0, 1, ...``.

        Returns
        -------
        x : torch.Tensor
            ``(n, C, H, W)`` normalized inputs.
        labels : torch.Tensor
            ``(n,)`` int64 true classes.
        """
        images, labels = self.raw_samples()
        if not 1 <= n <= len(labels):
            raise ValueError(f"n must be between 1 and {len(labels)}, got {n}")
        return self.prepare(images[:n]), torch.as_tensor(labels[:n], dtype=torch.long)

    def raw_samples(self) -> Tuple[np.ndarray, np.ndarray]:
        """The held-out samples as stored: ``images`` and ``labels`` arrays."""
        with np.load(self.samples) as data:
            return data["images"], data["labels"]

    def n_samples(self) -> int:
        """Number of shipped held-out samples."""
        with np.load(self.samples) as data:
            return len(data["labels"])

    def class_name(self, k: int) -> str:
        """Name of class ``k`` (its number if out of range)."""
        return self.class_names[k] if 0 <= k < len(self.class_names) else str(k)


@lru_cache(maxsize=None)
def _read_record(path: Path, trained_by: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"the model record {path} is missing; run {trained_by} to create it")
    return path.read_text()


# --------------------------------------------------------------------------- images
def flatten_alpha(image: Image.Image, background: Tuple[int, int, int] = (255, 255, 255)
                  ) -> Image.Image:
    """Composite an image with transparency onto a solid background (white).

    Parameters
    ----------
    image
        Any PIL image; images without an alpha channel or transparency are
        returned unchanged.
    background
        RGB color shown through transparent pixels.

    Returns
    -------
    PIL.Image.Image
    """
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _bit_depth(image: Image.Image) -> Optional[int]:
    """Bits per sample of a single-channel integer image wider than 8 bits, else None."""
    if image.mode.startswith("I;16"):
        return 16
    if image.mode == "I":
        # PNG and most formats store at most 16 bits per grey sample; Pillow opens
        # them as 32-bit "I" (older versions) without saying which
        return 16 if image.format in ("PNG", "PPM", "PGM") else 32
    return None


def gray_pixels(image: Union[Image.Image, np.ndarray, Tensor]) -> np.ndarray:
    """Any image as a float32 ``(H, W)`` grayscale array in ``[0, 1]``.

    Parameters
    ----------
    image
        A PIL image of any mode: transparent pixels become white
        (:func:`flatten_alpha`); 16-bit grayscale (``I;16``, or ``I`` from a PNG) is
        divided by 65535, not clipped to 8 bits; ``F`` (float) is taken as
        ``[0, 1]``.  Or an array/tensor ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``
        (RGB(A) by the ITU-R 601 luma weights): ``uint8`` is divided by 255,
        ``uint16`` by 65535, floats are taken as ``[0, 1]``.

    Returns
    -------
    numpy.ndarray
        Clipped to ``[0, 1]``.

    Raises
    ------
    ValueError
        For an unsupported shape or NaN/infinite values.
    """
    if isinstance(image, Image.Image):
        depth = _bit_depth(image)
        if depth is not None:
            gray = np.asarray(image, dtype=np.float64) / (2.0 ** depth - 1)
        elif image.mode == "F":
            gray = np.asarray(image, dtype=np.float64)
        else:
            gray = np.asarray(flatten_alpha(image).convert("L"), dtype=np.float64) / 255.0
    else:
        arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            gray = arr[..., :3].astype(np.float32) @ _LUMA / scale
        elif arr.ndim == 2:
            gray = arr.astype(np.float64) / scale
        else:
            raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, "
                             f"got shape {arr.shape}")
    if not np.isfinite(gray).all():
        raise ValueError("image contains NaN or infinite values")
    return np.clip(gray, 0.0, 1.0).astype(np.float32)


def resize(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Resize one float ``(H, W)`` image to ``size = (height, width)`` (Pillow
    bilinear on the float image)."""
    height, width = size
    if image.shape == (height, width):
        return np.asarray(image, dtype=np.float32)
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (width, height), _BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def gray_input(image: Union[Image.Image, np.ndarray, Tensor], invert: Optional[bool],
               size: Tuple[int, int], mean: float, std: float) -> Tensor:
    """One image to a normalized ``(1, 1, H, W)`` input for a model trained on bright
    objects on a dark background.

    ``invert=None`` inverts the image when its border is mostly bright (a dark object
    on white paper or a white studio background); ``True``/``False`` force it.
    """
    gray = gray_pixels(image)
    if invert is None:
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        invert = bool(border.mean() > 0.5)
    if invert:
        gray = 1.0 - gray
    return normalize_gray(resize(gray, size)[None], mean, std)


def normalize_gray(images: Sequence[np.ndarray], mean: float, std: float) -> Tensor:
    """``(N, H, W)`` floats in ``[0, 1]`` to the normalized ``(N, 1, H, W)`` tensor."""
    return ((torch.from_numpy(np.array(images, dtype=np.float32)) - mean) / std).unsqueeze(1)
