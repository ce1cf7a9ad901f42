"""Explain a small MLP on a real tabular data set and plot the relevance.

The data set is scikit-learn's bundled Wisconsin breast cancer data (569 tumours,
30 features computed from cell-nucleus images, labelled malignant or benign; no
download).  Features are standardised with the training statistics, so an input
of 0 is the average training tumour.  The model, an MLP with one output, predicts
the log-odds of *malignant*.

Every layer is dense, so the ``EpsilonPlus`` preset puts LRP-epsilon on every
layer.  On a ReLU network with biases this splits the log-odds among the features
(up to what the biases absorb), relative to the average tumour: a feature at its
training mean gets no relevance.

Writes ``tabular_sample.png`` (:func:`lrp.plot.plot`: one test tumour) and
``tabular_global.png`` (:func:`lrp.plot.plot_global`: all test tumours).

Usage::

    python examples/tabular.py [--out DIR] [--epochs N] [--seed S]

Needs scikit-learn and matplotlib (``pip install scikit-learn 'lrp[plot]'``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn

from lrp import explain
from lrp.composites import EpsilonPlus
from lrp.plot import plot, plot_global

DEFAULT_OUT = Path(__file__).resolve().parent / "output"


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """A 30-32-16-1 ReLU MLP trained full-batch with Adam on the log-odds of ``y``."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 1))
    # the classes are almost separable: L2 weight decay keeps the log-odds moderate
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=3e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss_fn(model(x)[:, 0], y).backward()
        optimizer.step()
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: examples/output)")
    parser.add_argument("--epochs", type=int, default=300, help="training epochs (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    data = load_breast_cancer()
    names = list(data.feature_names)
    malignant = (data.target == 0).astype(np.float32)  # sklearn: 0 = malignant, 1 = benign
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float32), malignant, test_size=0.25, random_state=0,
        stratify=malignant)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    x_train = torch.from_numpy((x_train - mean) / std)
    x_test = torch.from_numpy((x_test - mean) / std)

    model = train(x_train, torch.from_numpy(y_train), args.epochs, args.seed)
    with torch.no_grad():
        predicted = (model(x_test)[:, 0] > 0).numpy()
    accuracy = float((predicted == (y_test > 0.5)).mean())
    print(f"breast cancer MLP: test accuracy {accuracy:.3f} on {len(y_test)} held-out tumours")

    # target=0: the model's only output, the log-odds of "malignant"
    explanation = explain(model, x_test, EpsilonPlus(), target=0)
    logit = explanation.output[:, 0]
    gap = (explanation.conservation() - logit).abs()
    print(f"relevance sum vs. log-odds: mean |difference| {gap.mean():.3f} "
          f"(mean |log-odds| {logit.abs().mean():.3f}; the biases take the rest)")

    args.out.mkdir(parents=True, exist_ok=True)
    # the most confidently malignant test tumour; names carry its standardised values
    sample = int(logit.argmax())
    labelled = [f"{name} ({value:+.1f} sd)" for name, value in zip(names, x_test[sample].tolist())]
    ax = plot(explanation, labelled, sample=sample, top=15, class_names=["malignant"],
              title=f"test tumour {sample}, log-odds of malignant {float(logit[sample]):+.1f}\n"
                    "relevance of the 15 most relevant of 30 features")
    sample_png = args.out / "tabular_sample.png"
    ax.figure.savefig(sample_png, dpi=100)

    ax = plot_global(explanation, names, top=15, class_names=["malignant"],
                     title=f"relevance for malignant over {len(x_test)} test tumours\n"
                           "15 of 30 features, by mean |relevance|")
    global_png = args.out / "tabular_global.png"
    ax.figure.savefig(global_png, dpi=100)

    ranked = np.argsort(-explanation.relevance.abs().mean(0).numpy())[:5]
    print("largest mean |relevance|: " + ", ".join(names[i] for i in ranked))
    print(f"wrote {sample_png}")
    print(f"wrote {global_png}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
