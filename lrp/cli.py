"""The ``lrp`` command line (also ``python -m lrp``).

Subcommands::

    lrp demo [--out DIR] [--composite NAME] [-n N]
    lrp heatmap IMAGE... --model SPEC [--method NAME] [--composite NAME] [--target INT] [--out DIR]
                [--size H W] [--mean M...] [--std S...] [--grayscale] [--cmap NAME]
                [--low L] [--high H] [--overlay] [--clip-percentile P] [--no-canonize]
    lrp inspect --model SPEC [--composite NAME] [--size H W] [--grayscale]

A model ``SPEC`` is one of

* ``demo``: the shipped digits CNN (:mod:`lrp.demo`), with its own preprocessing
  (grayscale, 32x32, bright digit on dark background: dark-on-light images are
  inverted automatically),
* ``torchvision:ARCH`` or ``torchvision:ARCH:WEIGHTS.pth``: a classification
  architecture of ``torchvision.models`` built with ``weights=None``, then the
  optional ``state_dict`` file loaded (nothing is ever downloaded),
* a TorchScript file ``*.pt`` / ``*.pth`` (``torch.jit.load``); LRP rules attach as
  forward hooks, which TorchScript modules do not support, so these models can
  only be explained with ``--composite gradient``,
* ``package.module:factory``: imported (the current directory is searched too) and
  called without arguments; it must return an ``nn.Module``.

Composite names are the presets of :mod:`lrp.composites` in any case, with or
without dashes (``epsilon-gamma-box``, ``EpsilonGammaBox``, ...), and ``gradient``
(gradient x input).  Unless ``--no-canonize`` is given, BatchNorm layers are fused
into the preceding convolution (:class:`lrp.canonizers.MergeBatchNorm`).

``--method`` picks the attribution method: ``lrp`` (default, with ``--composite``),
``deeplift`` (Rescale, zero reference), ``gradient``, ``smoothgrad`` (32 noisy copies)
or ``integrated-gradients`` (32 steps, zero baseline).

Images other than for the demo model are converted to RGB (or grayscale with
``--grayscale``), resized to ``--size`` (default 224x224) with a bilinear filter,
scaled to ``[0, 1]`` and normalized with ``--mean`` / ``--std`` (default: the
ImageNet statistics).  Errors the user can fix (missing images, unknown names,
missing files) print one line on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

__all__ = ["main", "build_parser", "CLIError", "COMPOSITES", "METHODS", "make_composite",
           "load_model"]

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
    "gradient": None,
}
_ALIASES = {"gradientxinput": "gradient", "gradient-x-input": "gradient"}

#: Attribution methods of ``lrp heatmap --method``: ``lrp`` uses ``--composite``; the
#: others are called as ``f(model, x, target)`` (references and baselines: zeros).
METHODS = ("lrp", "deeplift", "gradient", "smoothgrad", "integrated-gradients")


def _run_method(method: str, model: nn.Module, x: Tensor, target: Optional[int]):
    from . import gradients

    if method == "deeplift":
        from .deeplift import deeplift
        return deeplift(model, x, target)
    if method == "gradient":
        return gradients.gradient(model, x, target=target)
    if method == "smoothgrad":
        return gradients.smoothgrad(model, x, target=target, n=32, seed=0)
    if method == "integrated-gradients":
        return gradients.integrated_gradients(model, x, target=target, steps=32)
    raise CLIError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Grayscale counterparts of the ImageNet statistics.
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)
#: Heatmaps smaller than this (longer side, pixels) are enlarged by an integer factor.
MIN_OUTPUT_SIZE = 256

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_NEAREST = getattr(Image, "Resampling", Image).NEAREST
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class CLIError(Exception):
    """An error the user can fix: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- composites
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
    from . import composites
    from .canonizers import MergeBatchNorm

    canonical = composite_name(name)
    preset = COMPOSITES[canonical]
    if preset is None:
        return None
    canonizers = [MergeBatchNorm()] if canonize else []
    factory = getattr(composites, preset)
    if preset == "EpsilonGammaBox":
        return factory(low if low is not None else -3.0, high if high is not None else 3.0,
                       canonizers=canonizers)
    return factory(canonizers=canonizers)


# --------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A model from a SPEC with what is needed to feed it."""

    model: nn.Module
    description: str
    is_demo: bool = False
    scripted: bool = False


def _load_state_dict(path: str) -> Dict[str, Tensor]:
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"weights file not found: {path}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling / format failure
        raise CLIError(f"cannot load weights {path}: {_first_line(err)}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CLIError(f"weights file {path} does not hold a state_dict")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _torchvision_model(arch: str, weights: Optional[str]) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        close = difflib.get_close_matches(arch, available, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            "; see torchvision.models.list_models()"
        raise CLIError(f"unknown torchvision architecture {arch!r}{hint}")
    state = _load_state_dict(weights) if weights else None
    model = torchvision.models.get_model(arch, weights=None)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise CLIError(f"weights {weights} do not fit torchvision {arch}: "
                           f"{_first_line(err)}") from None
    return model


def _factory_model(spec: str) -> nn.Module:
    module_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise CLIError(f"cannot import {module_name!r} for model {spec!r}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"module {module_name!r} has no attribute {attr!r} (model {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"{spec!r} is not callable")
    try:
        model = obj()
    except Exception as err:  # noqa: BLE001 - report the user's factory failure in one line
        raise CLIError(f"model factory {spec!r} failed: {type(err).__name__}: "
                       f"{_first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise CLIError(f"model factory {spec!r} returned {type(model).__name__}, "
                       "not a torch.nn.Module")
    return model


def load_model(spec: str) -> LoadedModel:
    """Load a model from a command-line SPEC (see the module docstring), in eval mode.

    Raises
    ------
    CLIError
        For an unknown spec, architecture or a missing/unloadable file.
    """
    if spec == "demo":
        from .demo import load_demo_model
        try:
            return LoadedModel(load_demo_model(), "demo (lrp.demo.DigitsCNN)", is_demo=True)
        except FileNotFoundError as err:
            raise CLIError(str(err)) from None
    if spec.startswith("torchvision:"):
        parts = spec.split(":", 2)
        arch = parts[1]
        if not arch:
            raise CLIError(f"model spec {spec!r} names no architecture "
                           "(expected torchvision:ARCH[:WEIGHTS.pth])")
        weights = parts[2] if len(parts) > 2 and parts[2] else None
        return LoadedModel(_torchvision_model(arch, weights).eval(),
                           f"torchvision {arch}" + (f" ({weights})" if weights else ""))
    if spec.lower().endswith((".pt", ".pth")) or Path(spec).is_file():
        if not Path(spec).is_file():
            raise CLIError(f"model file not found: {spec}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torch.jit.load(spec, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - not a TorchScript archive
            raise CLIError(f"cannot load {spec} as a TorchScript model ({_first_line(err)}); "
                           "for a state_dict use torchvision:ARCH:FILE or "
                           "package.module:factory") from None
        return LoadedModel(model.eval(), f"TorchScript {spec}", scripted=True)
    if _FACTORY.match(spec):
        return LoadedModel(_factory_model(spec).eval(), spec)
    raise CLIError(f"unknown model spec {spec!r}; expected 'demo', 'torchvision:ARCH[:WEIGHTS.pth]', "
                   "a TorchScript file (*.pt, *.pth) or 'package.module:factory'")


# --------------------------------------------------------------------------- inputs
@dataclass
class Preprocessing:
    """How images become model inputs."""

    size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    grayscale: bool
    demo: bool = False

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def bounds(self) -> Tuple[Tensor, Tensor]:
        """Normalized values of black and white pixels (per channel)."""
        mean = torch.tensor(self.mean).expand(self.channels)
        std = torch.tensor(self.std).expand(self.channels)
        return (0.0 - mean) / std, (1.0 - mean) / std

    def __call__(self, image: Image.Image) -> Tensor:
        if self.demo:
            from .demo import preprocess
            return preprocess(image)
        from .demo import flatten_alpha
        image = flatten_alpha(image).convert("L" if self.grayscale else "RGB")
        height, width = self.size
        if image.size != (width, height):
            image = image.resize((width, height), _BILINEAR)
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


def _preprocessing(args: argparse.Namespace, loaded: LoadedModel) -> Preprocessing:
    if loaded.is_demo:
        # the demo model's own preprocessing (with automatic inversion of dark-on-light
        # images) unless the user changes it
        from . import demo
        if args.size is None and args.mean is None and args.std is None:
            return Preprocessing((demo.SIZE, demo.SIZE), (demo.MEAN,), (demo.STD,), True,
                                 demo=True)
        default_size, default_mean, default_std = (demo.SIZE, demo.SIZE), (demo.MEAN,), (demo.STD,)
        grayscale = True
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


def _check_images(paths: Sequence[str]) -> None:
    for path in paths:
        if not Path(path).is_file():
            reason = "is a directory" if Path(path).is_dir() else "no such file"
            raise CLIError(f"cannot read image {path}: {reason}")
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise CLIError(f"cannot read image {path}: {_first_line(err)}") from None


def _open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CLIError(f"cannot read image {path}: {_first_line(err)}") from None


# --------------------------------------------------------------------------- helpers
def _first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an error message, cut after its first sentence if long."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if len(line) > limit and ". " in line:
        line = line[:line.index(". ") + 1]
    return line


def _enlarge(image: Image.Image, min_size: int = MIN_OUTPUT_SIZE) -> Image.Image:
    """Enlarge small images by an integer factor (nearest neighbour: pixels stay crisp)."""
    longest = max(image.size)
    if longest >= min_size:
        return image
    factor = math.ceil(min_size / longest)
    return image.resize((image.size[0] * factor, image.size[1] * factor), _NEAREST)


def _scripted_check(loaded: LoadedModel, composite) -> None:
    if loaded.scripted and composite is not None:
        raise CLIError(f"{loaded.description}: TorchScript modules do not support the forward "
                       "hooks LRP rules attach with; use --composite gradient, or give the "
                       "model as torchvision:ARCH:WEIGHTS or package.module:factory")


def _explain(model: nn.Module, x: Tensor, composite, target: Optional[int], audit: str,
             method: str = "lrp"):
    from . import explain
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method != "lrp":
                return _run_method(method, model, x, target)
            return explain(model, x, composite, target, audit=audit)
    except ValueError as err:
        raise CLIError(_first_line(err)) from None
    except RuntimeError as err:
        raise CLIError(f"the model failed on an input of shape {tuple(x.shape)}: "
                       f"{_first_line(err)}") from None


def _bounds_and_composite(args: argparse.Namespace, prep: Preprocessing):
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


def _check_cmap(name: str) -> None:
    from .image import colormap
    try:
        colormap(name)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _unique_stem(path: str, seen: Dict[str, int]) -> str:
    stem = Path(path).stem or "image"
    count = seen.get(stem, 0)
    seen[stem] = count + 1
    return stem if count == 0 else f"{stem}_{count}"


# --------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> int:
    """``lrp demo``: explain held-out digits with the shipped model."""
    from . import demo
    from .image import grid, heatmap, save

    _check_cmap(args.cmap)
    composite_name(args.composite)
    if not 1 <= args.n <= 60:
        raise CLIError(f"-n must be between 1 and 60, got {args.n}")
    loaded = load_model("demo")
    prep = _preprocessing(argparse.Namespace(size=None, mean=None, std=None, grayscale=False),
                          loaded)
    args.low = args.high = None
    composite = _bounds_and_composite(args, prep)
    x, labels = demo.demo_inputs(args.n)
    explanation = _explain(loaded.model, x, composite, None, "warn")
    pred = explanation.output.argmax(1)
    out = Path(args.out)
    written: List[Path] = []
    inputs, heats, captions = [], [], []
    for i in range(len(x)):
        true, guess = int(labels[i]), int(pred[i])
        heat = heatmap(explanation.relevance[i], args.cmap)
        written.append(save(_enlarge(heat), out / f"digit_{i:02d}_true{true}_pred{guess}.png"))
        inputs.append(Image.fromarray(prep.denormalize(x[i])).resize((128, 128), _NEAREST))
        heats.append(heat.resize((128, 128), _NEAREST))
        captions.append(f"true {true}/pred {guess}")
    board = grid(inputs + heats, labels=["input"] * len(x) + captions, ncols=len(x), pad=4)
    written.append(save(board, out / "grid.png"))
    correct = int((pred == labels).sum())
    name = composite.name if composite is not None else "GradientXInput"
    for path in written:
        print(f"wrote {path}")
    print(f"explained {len(x)} held-out digits with {name}; predicted {correct}/{len(x)} correctly")
    print(f"demo model: DigitsCNN, held-out test accuracy {demo.ACCURACY:.4f} "
          f"({demo.demo_info().get('n_test', '?')} digits)")
    if explanation.audit is not None and not explanation.audit.ok:
        print(f"lrp: warning: {explanation.audit}", file=sys.stderr)
    return 0


def cmd_heatmap(args: argparse.Namespace) -> int:
    """``lrp heatmap``: one heatmap PNG per image."""
    from tqdm import tqdm

    from .image import heatmap, overlay, save

    _check_images(args.images)
    _check_cmap(args.cmap)
    composite_name(args.composite)
    if args.method not in METHODS:
        raise CLIError(f"unknown method {args.method!r}; valid: {', '.join(METHODS)}")
    loaded = load_model(args.model)
    prep = _preprocessing(args, loaded)
    composite = _bounds_and_composite(args, prep)
    if args.method == "lrp":
        _scripted_check(loaded, composite)
    elif args.method == "deeplift" and loaded.scripted:
        raise CLIError(f"{loaded.description}: DeepLift needs module hooks, which TorchScript "
                       "modules do not have")
    out = Path(args.out)
    seen: Dict[str, int] = {}
    warned = False
    for path in tqdm(args.images, desc="explaining", unit="image", disable=None):
        x = prep(_open_image(path))
        explanation = _explain(loaded.model, x, composite, args.target,
                               "off" if loaded.scripted else "warn", args.method)
        if not warned and explanation.audit is not None and not explanation.audit.ok:
            tqdm.write(f"lrp: warning: {explanation.audit}", file=sys.stderr)
            warned = True
        stem = _unique_stem(path, seen)
        relevance = explanation.relevance[0]
        files = [save(_enlarge(heatmap(relevance, args.cmap,
                                       clip_percentile=args.clip_percentile)),
                      out / f"{stem}_heatmap.png")]
        if args.overlay:
            image = overlay(relevance, prep.denormalize(x[0]), cmap=args.cmap,
                            clip_percentile=args.clip_percentile)
            files.append(save(_enlarge(image), out / f"{stem}_overlay.png"))
        target = int(explanation.target[0])
        score = float(explanation.output[0, target])
        predicted = int(explanation.output[0].argmax())
        tqdm.write(f"{path}: class {target} (logit {score:.3f}, predicted {predicted}) -> "
                   + ", ".join(str(f) for f in files))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``lrp inspect``: the rule tree and the coverage audit."""
    from .composites import Composite

    composite_name(args.composite)
    loaded = load_model(args.model)
    prep = _preprocessing(args, loaded)
    composite = _bounds_and_composite(args, prep)
    _scripted_check(loaded, composite)
    shown = composite if composite is not None else Composite(name="GradientXInput")
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, prep.channels, *prep.size, generator=generator)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    print(f"model: {loaded.description}, {n_params:,} parameters")
    print(f"composite: {shown.name}"
          + (f", canonizers: {', '.join(type(c).__name__ for c in shown.canonizers)}"
             if shown.canonizers else ""))
    print(f"example input: random normal {tuple(example.shape)}")
    print()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = shown.tree(loaded.model, example)
    except RuntimeError as err:
        raise CLIError(f"the model failed on an input of shape {tuple(example.shape)}: "
                       f"{_first_line(err)}") from None
    print(tree)
    print()
    if loaded.scripted:
        print("coverage audit: not available for TorchScript models")
        return 0
    explanation = _explain(loaded.model, example, composite, None, "warn")
    print(str(explanation.audit))
    return 0


# --------------------------------------------------------------------------- parser
def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="SPEC",
                        help="demo | torchvision:ARCH[:WEIGHTS.pth] | TorchScript file "
                             "(*.pt, *.pth) | package.module:factory")
    parser.add_argument("--composite", default="epsilon-gamma-box", metavar="NAME",
                        help="rule preset: " + ", ".join(COMPOSITES)
                             + " (any case; default: %(default)s)")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lrp`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lrp", description="Layer-wise Relevance Propagation heatmaps for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"lrp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="explain held-out digits with the shipped model",
                          description="Explain held-out handwritten digits with the shipped "
                                      "demo CNN; no download needed.")
    demo.add_argument("--out", default="lrp-demo", metavar="DIR",
                      help="output directory (default: %(default)s)")
    demo.add_argument("--composite", default="epsilon-gamma-box", metavar="NAME",
                      help="rule preset: " + ", ".join(COMPOSITES) + " (default: %(default)s)")
    demo.add_argument("-n", type=int, default=10, help="number of digits, 1-60 "
                                                       "(default: %(default)s)")
    demo.add_argument("--cmap", default="bwr", help="colormap (default: %(default)s)")
    demo.set_defaults(func=cmd_demo)

    heat = sub.add_parser("heatmap", help="write a heatmap PNG per image",
                          description="Explain images with a model and write one heatmap PNG "
                                      "per image (IMAGE_heatmap.png).")
    heat.add_argument("images", nargs="+", metavar="IMAGE")
    _add_model_options(heat)
    heat.add_argument("--method", default="lrp", metavar="NAME",
                      help="attribution method: " + ", ".join(METHODS) + " (default: "
                           "%(default)s, with --composite)")
    heat.add_argument("--target", type=int, default=None,
                      help="class to explain (default: the predicted class)")
    heat.add_argument("--out", default="lrp-heatmaps", metavar="DIR",
                      help="output directory (default: %(default)s)")
    heat.add_argument("--cmap", default="bwr",
                      help="colormap name or spec, e.g. bwr, coldnhot, hot, '00f,fff,f00' "
                           "(default: %(default)s)")
    heat.add_argument("--overlay", action="store_true",
                      help="also write the heatmap blended over the input (IMAGE_overlay.png)")
    heat.add_argument("--clip-percentile", type=float, default=None, metavar="P",
                      help="clip |relevance| at this percentile before coloring, e.g. 99.5")
    heat.set_defaults(func=cmd_heatmap)

    inspect = sub.add_parser("inspect", help="print the rule of every layer and the audit",
                             description="Print the composite's rule for every module of the "
                                         "model and the coverage audit of one explanation.")
    _add_model_options(inspect)
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``lrp`` command line.

    Parameters
    ----------
    argv
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 on success, 2 for usage errors.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"lrp: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lrp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
