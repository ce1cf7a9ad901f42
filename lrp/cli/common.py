"""Shared pieces of the ``lrp`` subcommands: composite and method names, model
loading with one-line errors, image preprocessing, and the options every command
that runs a model takes."""
from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from .. import models
from ..demo import ShippedModel, flatten_alpha, gray_pixels
from ..demo.base import resize
from ..models import LoadedModel, first_line

class CLIError(Exception):
    """An error the user can fix: printed as one line, exit status 2."""



#: Composite names accepted on the command line -> preset in :mod:`lrp.composites`
#: (``None``: gradient x input, no composite).
COMPOSITES: Dict[str, Optional[str]] = {
    "epsilon-gamma-box": "EpsilonGammaBox",
    "epsilon-plus": "EpsilonPlus",
    "epsilon-plus-flat": "EpsilonPlusFlat",
    "epsilon-alpha2-beta1": "EpsilonAlpha2Beta1",
    "epsilon-alpha2-beta1-flat": "EpsilonAlpha2Beta1Flat",
    "excitation-backprop": "ExcitationBackprop",
    "guided-backprop": "GuidedBackprop",
    "attn-lrp": "AttnLRP",
    "cp-lrp": "CPLRP",
    "cp-lrp-gamma": "CPLRP",
    "gradient": None,
}
#: Preset options behind a name (``cp-lrp-gamma``: LXT's ViT recipe, generalized
#: LRP-gamma 0.25 on the linear layers).
_PRESET_OPTIONS: Dict[str, Dict[str, float]] = {"cp-lrp-gamma": {"gamma": 0.25}}
#: The composite of a model that does not come with its own (shipped models name theirs
#: in :attr:`lrp.demo.ShippedModel.composite`).
DEFAULT_COMPOSITE = "epsilon-gamma-box"
_ALIASES = {"gradientxinput": "gradient", "gradient-x-input": "gradient"}

#: Attribution methods of ``lrp heatmap --method``: ``lrp`` uses ``--composite``; the
#: others are called as ``f(model, x, target)`` (references and baselines: zeros).
METHODS = ("lrp", "deeplift", "gradient", "smoothgrad", "integrated-gradients", "lime",
           "kernel-shap")
#: The library method (a name of :data:`lrp.data.METHODS`) and options behind each
#: ``--method`` other than ``lrp``.
METHOD_CALLS = {
    "deeplift": ("deeplift", {}),
    "gradient": ("gradient", {}),
    "smoothgrad": ("smoothgrad", {"n": 32, "seed": 0}),
    "integrated-gradients": ("integrated_gradients", {"steps": 32}),
    "lime": ("lime", {"seed": 0}),
    "kernel-shap": ("kernel_shap", {"seed": 0}),
}


def run_method(method: str, model: nn.Module, x: Tensor, target: Optional[int]):
    if method not in METHOD_CALLS:
        raise CLIError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    from ..data.attribute import method_function
    name, options = METHOD_CALLS[method]
    return method_function(name)(model, x, target=target, **options)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Grayscale counterparts of the ImageNet statistics.
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)
#: Heatmaps smaller than this (longer side, pixels) are enlarged by an integer factor.
MIN_OUTPUT_SIZE = 256

BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
NEAREST = getattr(Image, "Resampling", Image).NEAREST


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def composite_name(name: str) -> str:
    """The canonical (dashed) name of a composite given in any spelling.

    Raises
    ------
    CLIError
        For an unknown name (the message lists the valid ones).
    """
    keys = {_key(k): k for k in COMPOSITES}
    keys.update({_key(k): v for k, v in _ALIASES.items()})
    found = keys.get(_key(name))
    if found is None:
        raise CLIError(f"unknown composite {name!r}; valid names: {', '.join(COMPOSITES)}")
    return found


def make_composite(name: str, *, low=None, high=None, canonize: bool = True):
    """Build a composite from its command-line name.

    Parameters
    ----------
    name
        Any spelling of a key of :data:`COMPOSITES`.
    low, high
        Input bounds for ``epsilon-gamma-box`` (scalars or per-channel tensors).
    canonize
        Fuse BatchNorm layers (:class:`lrp.canonizers.MergeBatchNorm`).

    Returns
    -------
    lrp.composites.Composite or None
        ``None`` for ``gradient``.
    """
    from .. import composites
    from ..canonizers import MergeBatchNorm

    canonical = composite_name(name)
    preset = COMPOSITES[canonical]
    if preset is None:
        return None
    canonizers = [MergeBatchNorm()] if canonize else []
    factory = getattr(composites, preset)
    if preset == "EpsilonGammaBox":
        return factory(low if low is not None else -3.0, high if high is not None else 3.0,
                       canonizers=canonizers)
    return factory(canonizers=canonizers, **_PRESET_OPTIONS.get(canonical, {}))




def load_model(spec: str) -> LoadedModel:
    """:func:`lrp.models.load_model`, its errors as :class:`CLIError`."""
    try:
        return models.load_model(spec)
    except models.SpecError as err:
        raise CLIError(str(err)) from None


# --------------------------------------------------------------------------- inputs
@dataclass
class Preprocessing:
    """How images become model inputs."""

    size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    grayscale: bool
    #: A shipped model whose own preprocessing is used (with automatic inversion).
    shipped: Optional[ShippedModel] = None

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def bounds(self) -> Tuple[Tensor, Tensor]:
        """Normalized values of black and white pixels (per channel)."""
        mean = torch.tensor(self.mean).expand(self.channels)
        std = torch.tensor(self.std).expand(self.channels)
        return (0.0 - mean) / std, (1.0 - mean) / std

    def __call__(self, image: Image.Image) -> Tensor:
        if self.shipped is not None:
            return self.shipped.preprocess(image)
        height, width = self.size
        if image.mode.startswith("I") or image.mode == "F":
            # 16/32-bit grayscale: scaled by its bit depth (convert() would clip to 8 bits)
            arr = resize(gray_pixels(image), (height, width))[None]
            if not self.grayscale:
                arr = np.repeat(arr, 3, axis=0)
        else:
            image = flatten_alpha(image).convert("L" if self.grayscale else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), BILINEAR)
            arr = np.asarray(image, dtype=np.float32) / 255.0
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        x = torch.from_numpy(np.ascontiguousarray(arr))
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return ((x - mean) / std).unsqueeze(0)

    def denormalize(self, x: Tensor) -> np.ndarray:
        """A normalized ``(C, H, W)`` input as ``uint8`` ``(H, W, 3)``."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        img = ((x.detach().cpu() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        return img.expand(3, -1, -1).permute(1, 2, 0).numpy()


def preprocessing(args: argparse.Namespace, loaded: LoadedModel) -> Preprocessing:
    shipped = loaded.shipped
    if shipped is not None:
        # the shipped model's own preprocessing (with automatic inversion of dark-on-light
        # images) unless the user changes it
        if args.size is None and args.mean is None and args.std is None:
            return Preprocessing(shipped.size, shipped.mean, shipped.std, shipped.channels == 1,
                                 shipped=shipped)
        default_size, default_mean, default_std = shipped.size, shipped.mean, shipped.std
        grayscale = shipped.channels == 1
    else:
        grayscale = bool(args.grayscale)
        default_size = (224, 224)
        default_mean = GRAY_MEAN if grayscale else IMAGENET_MEAN
        default_std = GRAY_STD if grayscale else IMAGENET_STD
    size = tuple(args.size) if args.size is not None else default_size
    if any(s < 1 for s in size):
        raise CLIError(f"--size must be positive, got {size[0]} {size[1]}")
    mean = tuple(args.mean) if args.mean is not None else default_mean
    std = tuple(args.std) if args.std is not None else default_std
    channels = 1 if grayscale else 3
    for name, values in (("--mean", mean), ("--std", std)):
        if len(values) not in (1, channels):
            raise CLIError(f"{name} needs 1 or {channels} values for {channels}-channel input, "
                           f"got {len(values)}")
    if any(s <= 0 for s in std):
        raise CLIError("--std values must be positive")
    return Preprocessing(size, mean, std, grayscale)  # type: ignore[arg-type]


def check_images(paths: Sequence[str]) -> None:
    for path in paths:
        if not Path(path).is_file():
            reason = "is a directory" if Path(path).is_dir() else "no such file"
            raise CLIError(f"cannot read image {path}: {reason}")
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise CLIError(f"cannot read image {path}: {first_line(err)}") from None


def open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CLIError(f"cannot read image {path}: {first_line(err)}") from None


# --------------------------------------------------------------------------- helpers
def enlarge(image: Image.Image, min_size: int = MIN_OUTPUT_SIZE) -> Image.Image:
    """Enlarge small images by an integer factor (nearest neighbour: pixels stay crisp)."""
    longest = max(image.size)
    if longest >= min_size:
        return image
    factor = math.ceil(min_size / longest)
    return image.resize((image.size[0] * factor, image.size[1] * factor), NEAREST)


def check_out(out: str) -> Path:
    """``--out DIR`` is a directory that can be written (or created): else a
    :class:`CLIError`, before any model runs.  Creates nothing."""
    path = Path(out)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        what = "is an existing file" if existing == path else f"is inside the file {existing}"
        raise CLIError(f"--out {out} {what}; give a directory")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as err:
        raise CLIError(f"cannot write to --out {out}: {err.strerror or first_line(err)} "
                       f"({existing})") from None
    return path


def notice(message: str) -> None:
    """Print a one-line notice on stderr (the run goes on)."""
    print(f"lrp: notice: {message}", file=sys.stderr)


def blank_notice(name: str, output: Tensor, relevance: Tensor) -> Optional[str]:
    """Why the heatmap of one sample is blank, or None if it is not."""
    if bool((output == output[0]).all()):
        return (f"{name}: the model gives every class the same output ({float(output[0]):g}), so "
                "the relevance is zero and the heatmap blank (a classifier head initialised to "
                "zero, as in torchvision's ViT without weights, does this)")
    if not bool(relevance.any()):
        return f"{name}: the relevance is zero everywhere, so the heatmap is blank"
    return None


def add_figure_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-label", action="store_true",
                        help="no label (classes and explained logit) above each heatmap")
    parser.add_argument("--no-colorbar", action="store_true",
                        help="no colour bar with the value scale beside each heatmap")


def figure(image: Image.Image, relevance: Tensor, label: Sequence[str], args: argparse.Namespace,
           clip_percentile: Optional[float] = None) -> Image.Image:
    """A single-image PNG: enlarged, with its label and colour bar unless turned off."""
    from ..image import annotate, colormap, value_range

    image = enlarge(image)
    if args.no_label and args.no_colorbar:
        return image
    cmap = None if args.no_colorbar else args.cmap
    values = None if cmap is None else value_range(relevance, cmap, clip_percentile=clip_percentile)
    caption = None if cmap is None else ("R" if colormap(cmap).diverging else "|R|")
    return annotate(image, None if args.no_label else label, cmap=cmap, values=values,
                    caption=caption)


def class_label(k: int, names: Optional[Sequence[str]]) -> str:
    """``"3 (Dress)"`` with names, else ``"3"``."""
    name = names[k] if names is not None and 0 <= k < len(names) else str(k)
    return str(k) if name == str(k) else f"{k} ({name})"


def scripted_check(loaded: LoadedModel, composite) -> None:
    if loaded.scripted and composite is not None:
        raise CLIError(f"{loaded.description}: TorchScript modules do not support the forward "
                       "hooks LRP rules attach with; use --composite gradient, or give the "
                       "model as torchvision:ARCH:WEIGHTS or package.module:factory")


def read_class_names(spec: Optional[str]) -> Optional[Tuple[str, ...]]:
    """``--class-names``: a text file with one name per line, or names separated by
    commas; ``None`` for no names."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise CLIError(f"cannot read class names from {spec}: {first_line(err)}") from None
        names = [line.strip() for line in lines if line.strip()]
    else:
        names = [name.strip() for name in spec.split(",")]
    if not names or not all(names):
        raise CLIError(f"--class-names {spec!r}: give a file with one name per line or "
                       "non-empty names separated by commas")
    return tuple(names)


def run_explanation(model: nn.Module, x: Tensor, composite, target: Optional[int], audit: str,
             method: str = "lrp"):
    from .. import explain
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method != "lrp":
                return run_method(method, model, x, target)
            return explain(model, x, composite, target, audit=audit)
    except ValueError as err:
        raise CLIError(first_line(err)) from None
    except RuntimeError as err:
        raise CLIError(f"the model failed on an input of shape {tuple(x.shape)}: "
                       f"{first_line(err)}") from None


def model_composite(args: argparse.Namespace, loaded: LoadedModel) -> None:
    """Without ``--composite``, use the shipped model's own preset, else
    :data:`DEFAULT_COMPOSITE`."""
    if args.composite is None:
        args.composite = loaded.shipped.composite if loaded.shipped is not None \
            else DEFAULT_COMPOSITE


def model_and_composite(args: argparse.Namespace) -> Tuple[LoadedModel, Preprocessing, object]:
    """``--model`` loaded, its preprocessing, and the composite of ``--composite`` (the
    model's own without it) with the model's input bounds."""
    loaded = load_model(args.model)
    model_composite(args, loaded)
    prep = preprocessing(args, loaded)
    return loaded, prep, bounds_and_composite(args, prep)


def check_composite(name: Optional[str]) -> None:
    """Refuse an unknown ``--composite`` before any model is loaded (``None``: the
    model's default, resolved later by :func:`model_composite`)."""
    if name is not None:
        composite_name(name)


def bounds_and_composite(args: argparse.Namespace, prep: Preprocessing):
    canonical = composite_name(args.composite)
    if (args.low is not None or args.high is not None) and canonical != "epsilon-gamma-box":
        raise CLIError("--low/--high apply only to --composite epsilon-gamma-box")
    low, high = prep.bounds()
    if args.low is not None:
        low = torch.tensor(args.low)
    if args.high is not None:
        high = torch.tensor(args.high)
    if canonical == "epsilon-gamma-box" and not bool((low <= high).all()):
        raise CLIError("--low must not exceed --high")
    if low.numel() == 1 and high.numel() == 1:
        low, high = float(low.reshape(())), float(high.reshape(()))
    return make_composite(canonical, low=low, high=high,
                          canonize=not getattr(args, "no_canonize", False))


def check_cmap(name: str) -> None:
    from ..image import colormap
    try:
        colormap(name)
    except ValueError as err:
        raise CLIError(str(err)) from None


def unique_stem(path: str, seen: Dict[str, int]) -> str:
    stem = Path(path).stem or "image"
    count = seen.get(stem, 0)
    seen[stem] = count + 1
    return stem if count == 0 else f"{stem}_{count}"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    from ..demo import MODELS
    from ..models import RANDOM_WEIGHTS_SEED

    parser.add_argument("--model", required=True, metavar="SPEC",
                        help=f"a shipped model ({', '.join(MODELS)}; demo = digits) | "
                             "torchvision:ARCH[:WEIGHTS.pth] (without WEIGHTS: random weights "
                             f"initialised with seed {RANDOM_WEIGHTS_SEED}) | TorchScript file "
                             "(*.pt, *.pth) | package.module:factory")
    parser.add_argument("--composite", default=None, metavar="NAME",
                        help="rule preset: " + ", ".join(COMPOSITES) + " (any case; default: "
                             f"the shipped model's own, else {DEFAULT_COMPOSITE})")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="input size (default 224 224; 32 32 for the demo model)")
    parser.add_argument("--mean", type=float, nargs="+", metavar="M",
                        help="per-channel normalization mean (default: ImageNet)")
    parser.add_argument("--std", type=float, nargs="+", metavar="S",
                        help="per-channel normalization std (default: ImageNet)")
    parser.add_argument("--grayscale", action="store_true",
                        help="feed one grayscale channel instead of RGB")
    parser.add_argument("--low", type=float, default=None,
                        help="lowest normalized input value for epsilon-gamma-box "
                             "(default: from --mean/--std, i.e. a black pixel)")
    parser.add_argument("--high", type=float, default=None,
                        help="highest normalized input value for epsilon-gamma-box "
                             "(default: a white pixel)")
    parser.add_argument("--no-canonize", action="store_true",
                        help="do not fuse BatchNorm layers into the preceding convolutions")


