"""Model specs: the models ``lrp`` can load by name, for the command line and scripts.

A model ``SPEC`` is one of

* the name of a shipped model (:data:`lrp.demo.MODELS`): ``digits`` (also ``demo``)
  or ``fashion``,
* ``torchvision:ARCH`` or ``torchvision:ARCH:WEIGHTS.pth``: a classification
  architecture of ``torchvision.models`` built with ``weights=None``, then the
  optional ``state_dict`` file loaded (nothing is ever downloaded).  Without a
  weights file the weights are random, initialised under
  ``torch.manual_seed(RANDOM_WEIGHTS_SEED)`` (0) so that runs agree, and
  :attr:`LoadedModel.notice` says so,
* a TorchScript file ``*.pt`` / ``*.pth`` (``torch.jit.load``),
* ``package.module:factory``: imported (the current directory is searched too) and
  called without arguments; it must return an ``nn.Module``.

:func:`load_model` returns the model in eval mode; problems the user can fix raise
:class:`SpecError` with a one-line message.
"""
from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .demo import ShippedModel

__all__ = ["LoadedModel", "SpecError", "load_model", "first_line", "RANDOM_WEIGHTS_SEED"]

#: Seed of the random weights of ``torchvision:ARCH`` without a weights file.
RANDOM_WEIGHTS_SEED = 0

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class SpecError(ValueError):
   """A model spec that cannot be loaded (one-line message)."""


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an error message, cut after its first sentence if long."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if len(line) > limit and ". " in line:
        line = line[:line.index(". ") + 1]
    return line



@dataclass
class LoadedModel:
    """A model from a SPEC with what is needed to feed it."""

    model: nn.Module
    description: str
    scripted: bool = False
    #: The registry entry of a shipped model (preprocessing, class names), else None.
    shipped: Optional["ShippedModel"] = None
    #: A one-line notice for the user (e.g. random weights), else None.
    notice: Optional[str] = None

    @property
    def is_demo(self) -> bool:
        """Whether this is a shipped model of :mod:`lrp.demo`."""
        return self.shipped is not None

    @property
    def class_names(self) -> Optional[Sequence[str]]:
        """Names of the outputs, where known (shipped models)."""
        return self.shipped.class_names if self.shipped is not None else None


def _load_state_dict(path: str) -> Dict[str, Tensor]:
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"weights file not found: {path}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling / format failure
        raise SpecError(f"cannot load weights {path}: {first_line(err)}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SpecError(f"weights file {path} does not hold a state_dict")
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
        raise SpecError(f"unknown torchvision architecture {arch!r}{hint}")
    state = _load_state_dict(weights) if weights else None
    with torch.random.fork_rng(devices=[]):  # seeded init, the caller's RNG untouched
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = torchvision.models.get_model(arch, weights=None)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise SpecError(f"weights {weights} do not fit torchvision {arch}: "
                            f"{first_line(err)}") from None
    return model


def call_factory(spec: str, what: str = "model"):
    """Import ``package.module:factory`` (the current directory is searched too) and call
    it without arguments; failures as :class:`SpecError` naming ``what``."""
    module_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise SpecError(f"cannot import {module_name!r} for {what} {spec!r}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"module {module_name!r} has no attribute {attr!r} ({what} {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"{spec!r} is not callable")
    try:
        return obj()
    except Exception as err:  # noqa: BLE001 - report the user's factory failure in one line
        raise SpecError(f"{what} factory {spec!r} failed: {type(err).__name__}: "
                        f"{first_line(err)}") from None


def _factory_model(spec: str) -> nn.Module:
    model = call_factory(spec, "model")
    if not isinstance(model, nn.Module):
        raise SpecError(f"model factory {spec!r} returned {type(model).__name__}, "
                        "not a torch.nn.Module")
    return model


def load_model(spec: str) -> LoadedModel:
    """Load a model from a command-line SPEC (see the module docstring), in eval mode.

    Raises
    ------
    SpecError
        For an unknown spec, architecture or a missing/unloadable file.
    """
    from . import demo
    if spec in demo.MODELS or spec in demo.ALIASES:
        shipped = demo.shipped_model(spec)
        try:
            return LoadedModel(shipped.load(), f"{spec} (lrp.demo: {shipped.title})",
                               shipped=shipped)
        except FileNotFoundError as err:
            raise SpecError(str(err)) from None
    if spec.startswith("torchvision:"):
        parts = spec.split(":", 2)
        arch = parts[1]
        if not arch:
            raise SpecError(f"model spec {spec!r} names no architecture "
                            "(expected torchvision:ARCH[:WEIGHTS.pth])")
        weights = parts[2] if len(parts) > 2 and parts[2] else None
        notice = None if weights else (
            f"torchvision {arch} without a weights file: random weights (seed "
            f"{RANDOM_WEIGHTS_SEED}), so the heatmap shows no trained decision; give "
            f"torchvision:{arch}:WEIGHTS.pth for a trained model")
        return LoadedModel(_torchvision_model(arch, weights).eval(),
                           f"torchvision {arch}" + (f" ({weights})" if weights else " (random weights)"),
                           notice=notice)
    if spec.lower().endswith((".pt", ".pth")) or Path(spec).is_file():
        if not Path(spec).is_file():
            raise SpecError(f"model file not found: {spec}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torch.jit.load(spec, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - not a TorchScript archive
            raise SpecError(f"cannot load {spec} as a TorchScript model ({first_line(err)}); "
                            "for a state_dict use torchvision:ARCH:FILE or "
                            "package.module:factory") from None
        return LoadedModel(model.eval(), f"TorchScript {spec}", scripted=True)
    if _FACTORY.match(spec):
        return LoadedModel(_factory_model(spec).eval(), spec)
    raise SpecError(f"unknown model spec {spec!r}; expected a shipped model "
                    f"({', '.join(demo.MODELS)}, demo), 'torchvision:ARCH[:WEIGHTS.pth]', "
                    "a TorchScript file (*.pt, *.pth) or 'package.module:factory'")
