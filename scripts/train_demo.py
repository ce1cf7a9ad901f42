"""Train the shipped demo model :class:`lrp.demo.DigitsCNN` on scikit-learn's digits.

Deterministic (seeded, deterministic algorithms, fixed thread count) and fast
(a few seconds on a CPU).  Writes into ``lrp/assets/``:

* ``digits_cnn.pt``: the ``state_dict``,
* ``digits_cnn.json``: held-out test accuracy, split, preprocessing, training setup,
* ``digits_samples.npz``: 60 held-out test digits (6 per class, classes cycling
  0..9) as raw 8x8 ``uint8`` (values 0-16) with labels and their index in
  ``load_digits()``, used by :func:`lrp.demo.demo_inputs` and the tests.

Usage::

    python scripts/train_demo.py [--epochs 15] [--seed 0]

Needs scikit-learn (only here, not at run time).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import sklearn
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from lrp.demo import (DATA_DIR, INFO, MEAN, SAMPLES, SIZE, STD, WEIGHTS, DigitsCNN,
                      prepare_digits)

TEST_SIZE = 0.25
SPLIT_SEED = 0
SAMPLES_PER_CLASS = 6


def shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (background filled)."""
    n, _, h, w = x.shape
    background = (0.0 - MEAN) / STD
    padded = nn.functional.pad(x, (max_shift,) * 4, value=background)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(args.seed)

    digits = load_digits()
    raw = digits.images.astype(np.uint8)  # values 0..16
    index = np.arange(len(raw))
    i_train, i_test = train_test_split(index, test_size=TEST_SIZE, random_state=SPLIT_SEED)
    x_train, y_train = prepare_digits(raw[i_train]), torch.as_tensor(digits.target[i_train])
    x_test, y_test = prepare_digits(raw[i_test]), torch.as_tensor(digits.target[i_test])

    model = DigitsCNN()
    n_params = sum(p.numel() for p in model.parameters())
    batch, lr = 64, 3e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = args.epochs * ((len(x_train) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for k in range(0, len(order), batch):
            idx = order[k:k + batch]
            xb = shift(x_train[idx], generator)
            loss = loss_fn(model(xb), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {total / len(x_train):.4f}  "
              f"test accuracy {accuracy(model, x_test, y_test):.4f}")
    seconds = time.perf_counter() - start
    model.eval()
    test_acc = accuracy(model, x_test, y_test)

    # held-out samples: the first SAMPLES_PER_CLASS test digits of each class, cycling 0..9
    labels_test = digits.target[i_test]
    per_class = [i_test[labels_test == c][:SAMPLES_PER_CLASS] for c in range(10)]
    chosen = np.array([per_class[c][k] for k in range(SAMPLES_PER_CLASS) for c in range(10)])
    sample_acc = accuracy(model, prepare_digits(raw[chosen]),
                          torch.as_tensor(digits.target[chosen]))

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS)
    np.savez_compressed(SAMPLES, images=raw[chosen], labels=digits.target[chosen].astype(np.uint8),
                        index=chosen.astype(np.int16))
    record = {
        "model": "lrp.demo.DigitsCNN",
        "parameters": n_params,
        "accuracy": round(test_acc, 6),
        "n_train": len(i_train),
        "n_test": len(i_test),
        "samples": {"file": SAMPLES.name, "n": len(chosen), "accuracy": round(sample_acc, 6),
                    "selection": f"first {SAMPLES_PER_CLASS} test digits of each class, "
                                 "classes cycling 0..9"},
        "split": {"dataset": "sklearn.datasets.load_digits",
                  "function": "sklearn.model_selection.train_test_split",
                  "test_size": TEST_SIZE, "random_state": SPLIT_SEED, "stratify": None},
        "preprocessing": {"scale": "digit values 0..16 divided by 16 (images: 0..255 / 255)",
                          "resize": f"{SIZE}x{SIZE}, Pillow bilinear on the float image",
                          "mean": MEAN, "std": STD, "channels": 1,
                          "polarity": "bright digit on dark background"},
        "training": {"epochs": args.epochs, "batch_size": batch, "optimizer": "AdamW",
                     "lr": lr, "weight_decay": 1e-4, "schedule": "OneCycleLR",
                     "augmentation": "random shifts of up to 2 pixels", "seed": args.seed,
                     "seconds": round(seconds, 1)},
        "versions": {"torch": torch.__version__, "sklearn": sklearn.__version__,
                     "python": platform.python_version()},
    }
    INFO.write_text(json.dumps(record, indent=2) + "\n")
    print(f"held-out test accuracy: {test_acc:.4f} ({len(i_test)} digits); "
          f"shipped samples: {sample_acc:.4f} ({len(chosen)} digits); {n_params} parameters; "
          f"trained in {seconds:.1f} s")
    for path in (WEIGHTS, INFO, SAMPLES):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
