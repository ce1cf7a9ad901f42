"""Train the shipped :class:`lrp.demo.fashion.FashionCNN` on Fashion-MNIST.

Reads Debian's ``dataset-fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``;
the files are in ``/usr/share/datasets/fashion-mnist``, or set ``LRP_FASHION_MNIST``),
trains on the standard 60,000 training images and measures the accuracy on the
10,000 test images, which training never sees.  Seeded and deterministic (for a
given thread count); about 20 minutes on one busy CPU core.  Writes into ``lrp/assets/``:

* ``fashion_cnn.pt``: the ``state_dict``,
* ``fashion_cnn.json``: test accuracy, split, preprocessing, training set-up,
* ``fashion_samples.npz``: 60 test images (the first 6 of each class in test-set
  order, classes cycling 0..9) as ``uint8`` 28x28 with labels and test-set index.

Usage::

    python scripts/train_fashion.py [--epochs 8] [--seed 0] [--threads 1]
    python scripts/train_fashion.py --evaluate     # re-measure the shipped weights
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lrp.demo.fashion import (CLASS_NAMES, INFO, LOW, MEAN, SAMPLES, SIZE, STD, WEIGHTS,
                              FashionCNN, load_fashion_mnist, load_fashion_model, prepare_fashion)

SAMPLES_PER_CLASS = 6


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translations by up to ``max_shift`` pixels (black fill) and horizontal flips."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4, value=LOW)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    out = torch.empty_like(x)
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            rows = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero()[:, 0]
            if len(rows):
                out[rows] = padded[rows, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[k:k + batch]).argmax(1) for k in range(0, len(x), batch)])


def evaluate(load: Callable[[], nn.Module] = load_fashion_model, info: Path = INFO) -> None:
    """Re-measure shipped weights (``load()``) on the test photos against ``info``'s record."""
    images, labels = load_fashion_mnist("test")
    accuracy = (predict(load(), prepare_fashion(images)).numpy() == labels).mean()
    recorded = json.loads(info.read_text())["accuracy"]
    print(f"shipped weights: test accuracy {accuracy:.4f} on {len(labels)} images "
          f"(recorded: {recorded:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--evaluate", action="store_true",
                        help="only measure the shipped weights on the test set")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.evaluate:
        evaluate()
        return

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(args.seed)
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    pixels = train_images.astype(np.float64) / 255
    print(f"training pixels: mean {pixels.mean():.4f}, std {pixels.std():.4f} "
          f"(normalized with {MEAN}, {STD})")
    x_train, y_train = prepare_fashion(train_images), torch.as_tensor(train_labels).long()
    x_test, y_test = prepare_fashion(test_images), torch.as_tensor(test_labels).long()

    model = FashionCNN()
    n_params = sum(p.numel() for p in model.parameters())
    batch, lr, weight_decay = 128, 4e-3, 5e-4
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = args.epochs * ((len(x_train) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for k in tqdm(range(0, len(order), batch), desc=f"epoch {epoch + 1}/{args.epochs}",
                      leave=False, disable=None):
            idx = order[k:k + batch]
            loss = loss_fn(model(augment(x_train[idx], generator)), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        accuracy = (predict(model, x_test) == y_test).float().mean().item()
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {total / len(x_train):.4f}  "
              f"test accuracy {accuracy:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start

    torch.save(model.state_dict(), WEIGHTS)
    model = load_fashion_model()  # the accuracy of exactly what ships
    test_pred = predict(model, x_test)
    test_acc = (test_pred == y_test).float().mean().item()
    per_class = {name: round((test_pred[y_test == k] == k).float().mean().item(), 4)
                 for k, name in enumerate(CLASS_NAMES)}
    firsts = [np.flatnonzero(test_labels == c)[:SAMPLES_PER_CLASS] for c in range(10)]
    chosen = np.array([firsts[c][k] for k in range(SAMPLES_PER_CLASS) for c in range(10)])
    sample_correct = int((test_pred[chosen] == y_test[chosen]).sum())
    np.savez_compressed(SAMPLES, images=test_images[chosen], labels=test_labels[chosen],
                        index=chosen.astype(np.int16))
    record = {
        "model": "lrp.demo.fashion.FashionCNN",
        "parameters": n_params,
        "accuracy": round(test_acc, 6),
        "n_train": len(x_train),
        "n_test": len(x_test),
        "per_class_accuracy": per_class,
        "class_names": list(CLASS_NAMES),
        "samples": {"file": SAMPLES.name, "n": len(chosen), "correct": sample_correct,
                    "accuracy": round(sample_correct / len(chosen), 6),
                    "selection": f"first {SAMPLES_PER_CLASS} test images of each class in "
                                 "test-set order, classes cycling 0..9"},
        "split": {"dataset": "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT license), "
                             "Debian package dataset-fashion-mnist",
                  "train": "train-images-idx3-ubyte (60,000)",
                  "test": "t10k-images-idx3-ubyte (10,000), never used in training"},
        "preprocessing": {"scale": "uint8 / 255", "size": f"{SIZE}x{SIZE}", "mean": MEAN,
                          "std": STD, "channels": 1,
                          "polarity": "bright article on black background"},
        "training": {"epochs": args.epochs, "batch_size": batch, "optimizer": "AdamW", "lr": lr,
                     "weight_decay": weight_decay, "schedule": "OneCycleLR",
                     "augmentation": "random shifts of up to 2 pixels, horizontal flips",
                     "seed": args.seed, "threads": args.threads, "seconds": round(seconds, 1)},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    INFO.write_text(json.dumps(record, indent=2) + "\n")
    print(f"test accuracy {test_acc:.4f} ({len(x_test)} images); shipped samples "
          f"{sample_correct}/{len(chosen)}; {n_params} parameters; trained in {seconds:.0f} s")
    for path in (WEIGHTS, INFO, SAMPLES):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
