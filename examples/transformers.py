"""AttnLRP, CP-LRP and gradient x input on a tiny BERT whose decisive tokens are known.

A synthetic token task: a sequence is ``[CLS]`` followed by 7 to 15 random filler
tokens (then padding), one of which is replaced by one of four *trigger* tokens at a
random position; the class is which trigger it is.  Only the trigger decides the class,
so a faithful explanation puts it first.  The script trains a tiny
``BertForSequenceClassification`` (built from a config: 2 layers, hidden 32, 2 heads;
no download) for a few seconds, then explains 200 held-out sequences for their class
with :func:`lrp.transformers.explain_tokens` and three methods:

* :func:`lrp.composites.AttnLRP` (Achtibat et al. 2024): relevance through the
  softmax by its own gradient, the uniform rule on ``QK^T`` and ``A V``,
* :func:`lrp.composites.CPLRP` (Ali et al. 2022): attention weights held constant,
* gradient x input at the input embeddings.

The **token-hit score** of a method is the fraction of the 200 sequences whose most
relevant token (largest per-token relevance, summed over the embedding dimensions,
among the non-padding tokens including ``[CLS]``) is the trigger.  The script prints it
for each method and writes ``transformers.png``: the token relevance of a few
sequences, one panel per method (red positive, blue negative, each sequence scaled to
its largest ``|R|``; the trigger framed in black).

It also saves the trained model and the 200 sequences to ``OUT/token_task/`` so other
tools can be compared on exactly the same data:

* ``config.json``, ``model.safetensors``: ``model.save_pretrained``; load with
  ``transformers.BertForSequenceClassification.from_pretrained(OUT/token_task)``,
* ``sequences.npz``: ``input_ids`` (200, 16) int64 (``[PAD]`` = 0 after the sequence),
  ``attention_mask`` (200, 16) int64 (1 on tokens, 0 on padding), ``labels`` (200,)
  int64 (the class, = the explained target), ``trigger_position`` (200,) int64 (index
  of the trigger in the row),
* ``task.json``: the vocabulary (token ids of ``[PAD]``, ``[CLS]``, the triggers and
  the fillers), the scores this run measured and their definition.

Usage::

    python examples/transformers.py [--out DIR] [--seed 0] [--steps 150]

Needs ``transformers`` and matplotlib (``pip install 'lrp[transformers,plot]'``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from lrp.composites import AttnLRP, CPLRP
from lrp.transformers import explain_tokens

DEFAULT_OUT = Path(__file__).resolve().parent / "output"

PAD, CLS = 0, 1
TRIGGERS = (2, 3, 4, 5)  # class k <=> token TRIGGERS[k] in the sequence
FILLERS = tuple(range(6, 50))
VOCAB = 50
LENGTH = 16  # [CLS] + up to 15 tokens
MIN_TOKENS = 7
N_HELD_OUT = 200


def token_name(token: int) -> str:
    """Readable name of a token id."""
    if token == PAD:
        return "[PAD]"
    if token == CLS:
        return "[CLS]"
    if token in TRIGGERS:
        return f"T{TRIGGERS.index(token)}"
    return f"f{token}"


def make_sequences(n: int, generator: torch.Generator) -> Dict[str, Tensor]:
    """``n`` random sequences of the task: ids, mask, labels, trigger positions."""
    lengths = torch.randint(MIN_TOKENS, LENGTH, (n,), generator=generator) + 1  # with [CLS]
    ids = torch.tensor(FILLERS)[torch.randint(len(FILLERS), (n, LENGTH), generator=generator)]
    ids[:, 0] = CLS
    mask = (torch.arange(LENGTH) < lengths[:, None]).long()
    ids[mask == 0] = PAD
    labels = torch.randint(len(TRIGGERS), (n,), generator=generator)
    position = 1 + (torch.rand(n, generator=generator) * (lengths - 1)).long()
    ids[torch.arange(n), position] = torch.tensor(TRIGGERS)[labels]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "trigger_position": position}


def build_model(seed: int) -> nn.Module:
    """A tiny BERT classifier from a config, initialised with ``seed``."""
    # run as a script, this file's folder comes first on sys.path, where its name would
    # hide the Hugging Face package
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=LENGTH, num_labels=len(TRIGGERS),
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        pad_token_id=PAD)
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def train(model: nn.Module, steps: int, generator: torch.Generator, batch: int = 64) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        data = make_sequences(batch, generator)
        out = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"])
        loss = nn.functional.cross_entropy(out.logits, data["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def token_hit(tokens: Tensor, mask: Tensor, position: Tensor) -> float:
    """Fraction of rows whose largest relevance (among unmasked tokens) is at ``position``."""
    ranked = tokens.masked_fill(mask == 0, -torch.inf).argmax(1)
    return float((ranked == position).float().mean())


def explain_all(model: nn.Module, data: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Per-token relevance ``(n, LENGTH)`` of every method, for the true class."""
    methods = {"AttnLRP": AttnLRP(), "CP-LRP": CPLRP(), "gradient x input": None}
    # the audit checks that the LRP rules cover every operation (gradient x input has none)
    return {name: explain_tokens(model, data["input_ids"], composite, target=data["labels"],
                                 attention_mask=data["attention_mask"],
                                 audit="off" if composite is None else "strict").tokens
            for name, composite in methods.items()}


def save_task(model: nn.Module, data: Dict[str, Tensor], scores: Dict[str, float],
              accuracy: float, out: Path) -> Path:
    folder = out / "token_task"
    model.save_pretrained(folder)
    np.savez(folder / "sequences.npz", **{k: v.numpy() for k, v in data.items()})
    task = {
        "task": "class k <=> trigger token triggers[k] appears once among random filler tokens",
        "pad": PAD, "cls": CLS, "triggers": list(TRIGGERS), "fillers": [FILLERS[0], FILLERS[-1]],
        "length": LENGTH, "n": len(data["labels"]), "held_out_accuracy": accuracy,
        "token_hit": scores,
        "token_hit_definition": "fraction of sequences whose largest per-token relevance "
                                "(sum over the embedding dimensions, at the input embeddings, "
                                "for the class in labels, over tokens with attention_mask 1, "
                                "[CLS] included) is at trigger_position",
    }
    (folder / "task.json").write_text(json.dumps(task, indent=2) + "\n")
    return folder


def plot(results: Dict[str, Tensor], scores: Dict[str, float], data: Dict[str, Tensor], rows: int,
         path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 1.0 + 0.45 * rows * len(results)),
                             squeeze=False)
    for ax, (name, tokens) in zip(axes[:, 0], results.items()):
        values = tokens[:rows].masked_fill(data["attention_mask"][:rows] == 0, 0.0)
        scaled = values / values.abs().amax(1, keepdim=True).clamp(min=1e-12)
        ax.imshow(scaled.numpy(), cmap="bwr", vmin=-1, vmax=1, aspect="auto")
        for i in range(rows):
            for j in range(LENGTH):
                if data["attention_mask"][i, j]:
                    ax.text(j, i, token_name(int(data["input_ids"][i, j])), ha="center",
                            va="center", fontsize=7)
            p = int(data["trigger_position"][i])
            ax.add_patch(Rectangle((p - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
        ax.set_title(f"{name}: the trigger (framed) ranked first in {scores[name]:.1%} of "
                     f"{len(data['labels'])} held-out sequences", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks(range(rows), [f"class {int(k)}" for k in data["labels"][:rows]], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(out: Path, seed: int = 0, steps: int = 150, rows: int = 6) -> Tuple[Dict[str, float], Path]:
    """Train, explain, score, plot and save; returns the token-hit scores and the figure."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    model = build_model(seed)
    train(model, steps, generator)
    held_out = make_sequences(N_HELD_OUT, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        logits = model(input_ids=held_out["input_ids"],
                       attention_mask=held_out["attention_mask"]).logits
    accuracy = float((logits.argmax(1) == held_out["labels"]).float().mean())
    print(f"tiny BERT trained in {time.perf_counter() - start:.1f} s; held-out accuracy "
          f"{accuracy:.3f} on {N_HELD_OUT} sequences")
    results = explain_all(model, held_out)
    scores = {name: token_hit(tokens, held_out["attention_mask"], held_out["trigger_position"])
              for name, tokens in results.items()}
    print("token-hit score (the trigger ranked first):")
    for name, score in scores.items():
        print(f"  {name:<18} {score:6.1%}")
    figure = plot(results, scores, held_out, rows, out / "transformers.png")
    folder = save_task(model, held_out, scores, accuracy, out)
    print(f"wrote {figure}")
    print(f"wrote {folder} (model, sequences.npz, task.json)")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return scores, figure


def main(argv=None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: examples/output)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the data")
    parser.add_argument("--steps", type=int, default=150, help="training steps of 64 sequences")
    args = parser.parse_args(argv)
    return run(args.out, args.seed, args.steps)[0]


if __name__ == "__main__":
    main()
