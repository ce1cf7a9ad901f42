"""Model specs: the models ``lrp`` can load by name, for the command line and scripts.

A model ``SPEC`` is one of

* ``demo``: the shipped digits CNN (:mod:`lrp.demo`),
* ``torchvision:ARCH`` or ``torchvision:ARCH:WEIGHTS.pth``: a classification
  architecture of ``torchvision.models`` built with ``weights=None``, then the
  optional ``state_dict`` file loaded (nothing is ever downloaded),
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
from typing import Dict, Optional

import torch
from torch import Tensor, nn

__all__ = ["LoadedModel", "SpecError", "load_model", "first_line"]

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
    is_demo: bool = False
    scripted: bool = False


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
    if spec == "demo":
        from .demo import load_demo_model
        try:
            return LoadedModel(load_demo_model(), "demo (lrp.demo.DigitsCNN)", is_demo=True)
        except FileNotFoundError as err:
            raise SpecError(str(err)) from None
    if spec.startswith("torchvision:"):
        parts = spec.split(":", 2)
        arch = parts[1]
        if not arch:
            raise SpecError(f"model spec {spec!r} names no architecture "
                            "(expected torchvision:ARCH[:WEIGHTS.pth])")
        weights = parts[2] if len(parts) > 2 and parts[2] else None
        return LoadedModel(_torchvision_model(arch, weights).eval(),
                           f"torchvision {arch}" + (f" ({weights})" if weights else ""))
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
    raise SpecError(f"unknown model spec {spec!r}; expected 'demo', 'torchvision:ARCH[:WEIGHTS.pth]', "
                    "a TorchScript file (*.pt, *.pth) or 'package.module:factory'")
