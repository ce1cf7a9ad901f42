"""Train the shipped :class:`lrp.demo.vit.FashionViT` on Fashion-MNIST.

The same data, split and preprocessing as ``scripts/train_fashion.py`` (Debian's
``dataset-fashion-mnist``; the standard 60,000 training photos; the accuracy measured
on the 10,000 test photos, which training never sees) and the same augmentation
(random shifts of up to 2 pixels, horizontal flips).  AdamW with a one-cycle schedule
(warm-up, then cosine decay) and label smoothing 0.1.  Seeded and deterministic (for a
given thread count); about 35 minutes on one busy CPU core.  Writes into ``lrp/assets/``:

* ``fashion_vit.pt``: the ``state_dict`` as float16 (half the size; the model loads it
  into float32, and the accuracy below is measured on exactly these weights),
* ``fashion_vit.json``: test accuracy, per-class accuracy, the accuracy on the 60
  shipped held-out photos (``fashion_samples.npz``, made by ``train_fashion.py``),
  split, preprocessing, architecture, training set-up.

Usage::

    python scripts/train_vit.py [--epochs 10] [--seed 0] [--threads 1]
    python scripts/train_vit.py --evaluate     # re-measure the shipped weights
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from train_fashion import augment, evaluate, predict  # scripts/ is on sys.path when run as a script

from lrp.demo.fashion import CLASS_NAMES, MEAN, SAMPLES, SIZE, STD, load_fashion_mnist, prepare_fashion
from lrp.demo.vit import INFO, WEIGHTS, FashionViT, load_vit_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--evaluate", action="store_true",
                        help="only measure the shipped weights on the test set")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.evaluate:
        evaluate(load_vit_model, INFO)
        return

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(args.seed)
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    x_train, y_train = prepare_fashion(train_images), torch.as_tensor(train_labels).long()
    x_test, y_test = prepare_fashion(test_images), torch.as_tensor(test_labels).long()

    model = FashionViT()
    n_params = sum(p.numel() for p in model.parameters())
    batch, lr, weight_decay, smoothing = 128, 2e-3, 0.05, 0.1
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = args.epochs * ((len(x_train) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                                   pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
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
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        accuracy = (predict(model, x_test) == y_test).float().mean().item()
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {total / len(x_train):.4f}  "
              f"test accuracy {accuracy:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start

    torch.save({k: v.half() for k, v in model.state_dict().items()}, WEIGHTS)
    model = load_vit_model()  # the accuracy of exactly what ships
    test_pred = predict(model, x_test)
    test_acc = (test_pred == y_test).float().mean().item()
    per_class = {name: round((test_pred[y_test == k] == k).float().mean().item(), 4)
                 for k, name in enumerate(CLASS_NAMES)}
    with np.load(SAMPLES) as data:
        chosen = data["index"].astype(np.int64)
    sample_correct = int((test_pred[chosen] == y_test[chosen]).sum())
    config = {"patch": model.patch_embed.kernel_size[0], "dim": model.head.in_features,
              "depth": len(model.blocks), "heads": model.blocks[0].attn.heads,
              "mlp_dim": model.blocks[0].mlp[0].out_features, "tokens": model.pos_embed.shape[1]}
    record = {
        "model": "lrp.demo.vit.FashionViT",
        "parameters": n_params,
        "architecture": config,
        "weights_dtype": "float16 (loaded into float32)",
        "accuracy": round(test_acc, 6),
        "n_train": len(x_train),
        "n_test": len(x_test),
        "per_class_accuracy": per_class,
        "class_names": list(CLASS_NAMES),
        "samples": {"file": SAMPLES.name, "n": len(chosen), "correct": sample_correct,
                    "accuracy": round(sample_correct / len(chosen), 6),
                    "selection": "the held-out photos of the shipped Fashion-MNIST CNN"},
        "split": {"dataset": "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT license), "
                             "Debian package dataset-fashion-mnist",
                  "train": "train-images-idx3-ubyte (60,000)",
                  "test": "t10k-images-idx3-ubyte (10,000), never used in training"},
        "preprocessing": {"scale": "uint8 / 255", "size": f"{SIZE}x{SIZE}", "mean": MEAN,
                          "std": STD, "channels": 1,
                          "polarity": "bright article on black background"},
        "training": {"epochs": args.epochs, "batch_size": batch, "optimizer": "AdamW", "lr": lr,
                     "weight_decay": weight_decay, "schedule": "OneCycleLR (10 % warm-up)",
                     "label_smoothing": smoothing, "grad_clip": 1.0,
                     "augmentation": "random shifts of up to 2 pixels, horizontal flips",
                     "seed": args.seed, "threads": args.threads, "seconds": round(seconds, 1)},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    INFO.write_text(json.dumps(record, indent=2) + "\n")
    print(f"test accuracy {test_acc:.4f} ({len(x_test)} images); shipped samples "
          f"{sample_correct}/{len(chosen)}; {n_params} parameters; trained in {seconds:.0f} s")
    for path in (WEIGHTS, INFO):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
