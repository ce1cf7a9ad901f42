"""Models that ship with the package, ready to explain without a download.

The registry :data:`MODELS` maps a name to a :class:`ShippedModel`: the architecture
and its trained weights, the preprocessing, held-out samples, class names and the
held-out accuracy.  ``lrp demo --model NAME`` and the model spec ``NAME`` of
``lrp heatmap`` / ``lrp inspect`` take these names.

* ``digits`` (:mod:`lrp.demo.digits`, also the spec ``demo``): a CNN on scikit-learn's
  8x8 handwritten digits, upsampled to 32x32.
* ``fashion`` (:mod:`lrp.demo.fashion`): a residual CNN with BatchNorm on
  Fashion-MNIST's 28x28 product photos.
* ``vit`` (:mod:`lrp.demo.vit`): a small Vision Transformer on the same photos,
  explained with the transformer rules by default.

The digits model's names (:class:`DigitsCNN`, :func:`load_demo_model`,
:func:`demo_inputs`, :data:`LOW`, ...) are importable from here, as before the
registry existed.  A new model is a module that builds a :class:`ShippedModel` and
one :func:`register` call below.

Example
-------
>>> from lrp.demo import shipped_model
>>> fashion = shipped_model("fashion")
>>> model = fashion.load()
>>> x, labels = fashion.inputs(10)
>>> [fashion.class_names[k] for k in labels[:3].tolist()]
['T-shirt/top', 'Trouser', 'Pullover']
"""
from __future__ import annotations

from typing import Any, Dict

from . import digits, fashion, vit
from .base import DATA_DIR, ShippedModel, flatten_alpha, gray_pixels
from .digits import (HIGH, INFO, LOW, MEAN, SAMPLES, SIZE, STD, WEIGHTS, DigitsCNN, demo_info,
                     demo_inputs, load_demo_model, prepare_digits, preprocess)

__all__ = [
    "ShippedModel",
    "MODELS",
    "register",
    "shipped_model",
    "gray_pixels",
    "DigitsCNN",
    "load_demo_model",
    "demo_inputs",
    "demo_info",
    "prepare_digits",
    "preprocess",
    "flatten_alpha",
    "MEAN",
    "STD",
    "LOW",
    "HIGH",
    "SIZE",
    "ACCURACY",  # noqa: F822 - provided by the module __getattr__
    "DATA_DIR",
    "WEIGHTS",
    "INFO",
    "SAMPLES",
]

#: The shipped models by name.
MODELS: Dict[str, ShippedModel] = {}
#: Other names for registered models.
ALIASES: Dict[str, str] = {"demo": "digits"}


def register(model: ShippedModel) -> ShippedModel:
    """Add a shipped model to :data:`MODELS` under ``model.name``; returns it."""
    if model.name in MODELS or model.name in ALIASES:
        raise ValueError(f"a shipped model named {model.name!r} is already registered")
    MODELS[model.name] = model
    return model


def shipped_model(name: str) -> ShippedModel:
    """The registered model called ``name`` (or an alias such as ``demo``).

    Raises
    ------
    KeyError
        For an unknown name; the message lists the registered ones.
    """
    found = MODELS.get(ALIASES.get(name, name))
    if found is None:
        raise KeyError(f"unknown shipped model {name!r}; available: {', '.join(MODELS)}")
    return found


register(digits.MODEL)
register(fashion.MODEL)
register(vit.MODEL)


def __getattr__(name: str) -> Any:
    # ACCURACY is read lazily so that importing this package works without the data
    # (the training scripts import the model classes before the files exist).
    if name == "ACCURACY":
        return digits.MODEL.accuracy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
