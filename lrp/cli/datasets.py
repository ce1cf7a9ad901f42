"""Datasets, devices and process groups for the dataset-scale subcommands.

``DATA`` is an image folder (one subfolder per class, like torchvision's
``ImageFolder``; images directly in the folder have no label) preprocessed like
``lrp heatmap``'s images, or ``package.module:factory``, a function returning a
map-style dataset of model-ready tensors or ``(tensor, label)`` pairs.

Started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), the commands join
the job's process group: gloo on the CPU, NCCL with ``--device cuda`` (each process
on ``cuda:LOCAL_RANK``).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .. import models
from .common import CLIError, Preprocessing, first_line, open_image

#: File name endings taken as images when a folder is expanded.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def expand_images(paths: Sequence[str]) -> list[str]:
    """Image paths with every directory replaced by the images below it, sorted."""
    out: list[str] = []
    for path in paths:
        if Path(path).is_dir():
            found = _images_in(Path(path), recursive=True)
            if not found:
                raise CLIError(f"no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in {path}")
            out += [str(p) for p in found]
        else:
            out.append(path)
    return out


class ImageFiles(torch.utils.data.Dataset):
    """Images preprocessed for the model; items ``(x, label)`` (or ``x`` without labels)."""

    def __init__(self, paths: Sequence[str], prep: Preprocessing,
                 labels: Optional[Sequence[int]] = None):
        self.paths = list(paths)
        self.prep = prep
        self.labels = None if labels is None else list(labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        x = self.prep(open_image(self.paths[i]))[0]
        if self.labels is None:
            return x
        return x, torch.tensor(self.labels[i])

    def key(self) -> str:
        """A hash of the file list (paths, sizes, modification times), the labels and
        the preprocessing: identifies the data without decoding the images."""
        h = hashlib.sha256(repr(self.prep).encode())
        for i, path in enumerate(self.paths):
            st = os.stat(path)
            label = None if self.labels is None else self.labels[i]
            h.update(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}:{label}".encode())
        return "files:" + h.hexdigest()


def image_folder(root: str, prep: Preprocessing) -> tuple[ImageFiles, Optional[list[str]]]:
    """The images of ``root``: one class per subfolder (sorted names), or unlabelled
    images directly in ``root``."""
    base = Path(root)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and _images_in(p, recursive=True))
    if classes:
        paths, labels = [], []
        for k, name in enumerate(classes):
            found = _images_in(base / name, recursive=True)
            paths += [str(p) for p in found]
            labels += [k] * len(found)
        return ImageFiles(paths, prep, labels), classes
    found = _images_in(base, recursive=False)
    if not found:
        raise CLIError(f"no images in {root} (expected one subfolder of images per class)")
    return ImageFiles([str(p) for p in found], prep), None


def load_dataset(spec: str, prep: Optional[Preprocessing]):
    """``(dataset, class names or None, data key or None)`` from a DATA argument."""
    if Path(spec).is_dir():
        if prep is None:
            raise CLIError("image folders need the model's preprocessing")
        dataset, classes = image_folder(spec, prep)
        return dataset, classes, dataset.key()
    if models._FACTORY.match(spec):
        try:
            dataset = models.call_factory(spec, "dataset")
        except models.SpecError as err:
            raise CLIError(str(err)) from None
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise CLIError(f"dataset factory {spec!r} returned {type(dataset).__name__}, not a "
                           "map-style dataset (len() and indexing)")
        return dataset, None, None
    if Path(spec).exists():
        raise CLIError(f"{spec} is not a folder of images")
    raise CLIError(f"no such folder: {spec} (DATA is an image folder or package.module:factory)")


def parse_target(value: str):
    """``--target``: ``predicted`` (None), ``label`` or a class index."""
    if value == "predicted":
        return None
    if value == "label":
        return "label"
    try:
        return int(value)
    except ValueError:
        raise CLIError(f"--target must be 'predicted', 'label' or a class index, got {value!r}") \
            from None


def error_line(err: BaseException) -> str:
    """One line for an error, also for one re-raised from a DataLoader worker."""
    text = str(err)
    if "Original Traceback" in text:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return lines[-1].strip()
    return f"{first_line(err)}"


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """Options of every dataset-scale subcommand."""
    parser.add_argument("data", metavar="DATA",
                        help="image folder (one subfolder per class) or package.module:factory "
                             "returning a dataset")
    parser.add_argument("--store", required=True, metavar="DIR",
                        help="store directory (created, or resumed if it exists)")
    parser.add_argument("--target", default="predicted", metavar="T",
                        help="explained class: predicted, label or a class index "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B",
                        help="samples per batch (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, metavar="W",
                        help="DataLoader worker processes (default: %(default)s)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or cuda:N (under torchrun, cuda means cuda:LOCAL_RANK; "
                             "default: %(default)s)")
    parser.add_argument("--checkpoint-every", type=int, default=10, metavar="K",
                        help="batches per checkpoint (default: %(default)s)")
    parser.add_argument("--data-key", default=None, metavar="KEY",
                        help="a string identifying the data instead of hashing them")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a store written with other weights, rules or data")
    parser.add_argument("--timeout", type=float, default=30, metavar="MIN",
                        help="minutes a rank waits for the others before giving up "
                             "(default: %(default)s)")


def check_sizes(args: argparse.Namespace) -> None:
    for name in ("batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0:
        raise CLIError("--workers must not be negative")


@contextlib.contextmanager
def process_group(device: str, timeout_minutes: float) -> Iterator[torch.device]:
    """Join the job's process group when started by torchrun; yield this process's device."""
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CLIError(f"unknown device {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError("--device cuda: CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    created = False
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise CLIError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=timeout_minutes))
        created = True
    try:
        yield dev
    finally:
        if created:
            dist.destroy_process_group()


def is_main() -> bool:
    """Whether this process prints (rank 0, or not distributed)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def first_input(dataset) -> Tensor:
    """The first sample's input, for checks before the run."""
    item = dataset[0]
    return item[0] if isinstance(item, (tuple, list)) else item


def explained_images(paths: Sequence[str], prep: Preprocessing, model, composite, target,
                     audit: str, method: str, batch_size: int, workers: int):
    """``(path, x, explanation)`` of each image, explained in batches of ``batch_size``
    loaded by ``workers`` DataLoader processes (``x`` and the explanation are those of
    the one image)."""
    import dataclasses

    from tqdm import tqdm

    from ..data.source import Source
    from .common import run_explanation

    if batch_size < 1 or workers < 0:
        raise CLIError("--batch-size must be at least 1 and --workers not negative")
    source = Source.of(ImageFiles(paths, prep), batch_size, workers)
    batches = source.cut(0, len(paths))
    with tqdm(total=len(paths), desc="explaining", unit="image", disable=None) as bar:
        for batch, x in zip(batches, source.loader(batches)):
            explanation = run_explanation(model, x, composite, target, audit, method)
            for j, i in enumerate(batch):
                one = dataclasses.replace(explanation, **{
                    f.name: getattr(explanation, f.name)[j:j + 1]
                    for f in dataclasses.fields(explanation)
                    if f.name in ("relevance", "output", "target", "convergence")
                    and getattr(explanation, f.name) is not None})
                yield paths[i], x[j:j + 1], one
                bar.update(1)
