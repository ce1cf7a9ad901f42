"""Train a tiny BERT sentiment classifier, save it for ``lrp text``, and colour its tokens.

The data are short synthetic reviews ("the acting was really wonderful", "the plot
was not boring") whose label is decided by one sentiment word, flipped by ``not``.
The model is a 2-layer BERT (hidden size 32) built from a config, with a WordPiece
tokenizer written here (so some words come in pieces: ``wonder ##ful``,
``un ##watch ##able``); it trains in a few seconds.  The script

* saves model and tokenizer with ``save_pretrained`` to ``OUT/sentiment-bert`` -- a
  directory ``lrp text --model`` takes,
* explains held-out reviews with :func:`lrp.composites.AttnLRP` through
  :func:`lrp.transformers.explain_tokens`, prints them coloured (:func:`lrp.text.to_ansi`),
  and counts how often the sentiment word (or ``not``) is the most relevant word,
* writes ``token_relevance.png`` (:func:`lrp.text.to_png`: three reviews with words
  merged, the first also token by token) and
  ``token_relevance.html`` (:func:`lrp.text.to_html`).

Usage::

    python examples/token_relevance.py [--out DIR] [--seed S] [--steps N]
    lrp text --model examples/output/sentiment-bert --merge-words "the plot was not wonderful"

Needs ``transformers`` (``pip install 'lrp[transformers]'``).
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from lrp.composites import AttnLRP
from lrp.image import save
from lrp.text import merge_words, to_ansi, to_html, to_png
from lrp.transformers import explain_tokens

DEFAULT_OUT = Path(__file__).resolve().parent / "output"
POSITIVE = ["good", "great", "wonderful", "brilliant", "enjoyable"]
NEGATIVE = ["bad", "awful", "boring", "unwatchable", "dull"]
SUBJECTS = ["the movie", "the film", "the plot", "the acting", "the ending", "the music", "this show"]
VERBS = ["was", "is", "seemed", "felt"]
ADVERBS = ["", "", "really", "quite", "very", "rather"]
FILLERS = ["", "", "", "to me", "overall", "in the end"]
#: The WordPiece vocabulary: whole words, and pieces for the rest.
PIECES = ["wonder", "##ful", "brill", "##iant", "enjoy", "##able", "bor", "##ing", "un", "##watch",
          "aw", "##ful"]


def review(rng: random.Random):
    """A review and its label (1 = positive); ``not`` flips the sentiment word."""
    positive = rng.random() < 0.5
    negated = rng.random() < 0.3
    word = rng.choice(POSITIVE if positive != negated else NEGATIVE)
    parts = [rng.choice(SUBJECTS), rng.choice(VERBS), "not" if negated else "",
             rng.choice(ADVERBS), word, rng.choice(FILLERS)]
    return " ".join(p for p in parts if p), int(positive), word


def build(out: Path, seed: int, steps: int):
    import transformers

    words = sorted({w for text in SUBJECTS + VERBS + ADVERBS + FILLERS for w in text.split()}
                   | {"not", "good", "great", "bad", "dull"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *PIECES]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(str(out / "vocab.txt"))
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model = transformers.BertForSequenceClassification(config)
    rng = random.Random(seed)
    train = [review(rng) for _ in range(2000)]
    test = [review(rng) for _ in range(200)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = rng.sample(train, 64)
        enc = tokenizer([t for t, _, _ in batch], return_tensors="pt", padding=True)
        loss = model(**enc, labels=torch.tensor([y for _, y, _ in batch])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        enc = tokenizer([t for t, _, _ in test], return_tensors="pt", padding=True)
        predicted = model(**enc).logits.argmax(1)
    accuracy = float((predicted == torch.tensor([y for _, y, _ in test])).float().mean())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model, tokenizer, test, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a model this small is fastest on one thread (no thread contention)

    start, cpu = time.perf_counter(), time.process_time()
    model_dir = args.out / "sentiment-bert"
    model, tokenizer, test, accuracy = build(model_dir, args.seed, args.steps)
    print(f"trained in {time.perf_counter() - start:.1f} s ({time.process_time() - cpu:.1f} s CPU); "
          f"held-out accuracy {accuracy:.1%} ({len(test)} reviews); saved to {model_dir}")

    hits, shown, images = 0, [], []
    for text, label, word in test:
        ids = tokenizer(text, return_tensors="pt").input_ids
        explanation = explain_tokens(model, ids, AttnLRP())
        tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
        words, relevance = merge_words(tokens, explanation.tokens[0])
        inner = relevance[1:-1]  # without [CLS] and [SEP]
        top = words[1:-1][int(np.argmax(np.abs(inner)))]
        hits += top in (word, "not")
        if len(shown) < 3 and ("not" in words) == (len(shown) == 1) and len(tokens) > len(words):
            target = int(explanation.target[0])
            names = model.config.id2label
            label_text = [repr(text), f"explains {names[target]} (label {names[label]}), "
                                      f"logit {float(explanation.output[0, target]):.3g}"]
            shown.append((tokens, explanation.tokens[0], label_text))
    print(f"AttnLRP: the sentiment word (or 'not') is the most relevant word (|R|, [CLS] and [SEP] "
          f"left out) in {hits / len(test):.0%} of the held-out reviews")
    for k, (tokens, relevance, label_text) in enumerate(shown):
        print(" ".join(label_text))
        print("  " + to_ansi(tokens, relevance, merge=True))
        images.append(to_png(tokens, relevance, merge=True, label=label_text, width=420))
        if k == 0:  # the same review token by token
            images.append(to_png(tokens, relevance, label=[label_text[0] + ": word pieces"], width=420))
    width = max(im.width for im in images)
    sheet = np.full((sum(im.height for im in images), width, 3), 255, np.uint8)
    y = 0
    for im in images:
        sheet[y:y + im.height, :im.width] = np.asarray(im)
        y += im.height
    from PIL import Image
    png = save(Image.fromarray(sheet), args.out / "token_relevance.png")
    page = args.out / "token_relevance.html"
    page.write_text(to_html(shown[0][0], shown[0][1], merge=True, label=shown[0][2]), encoding="utf-8")
    print(f"wrote {png} and {page} in {time.perf_counter() - start:.1f} s")
    print(f"try: lrp text --model {model_dir} --merge-words \"the plot was not wonderful\"")


if __name__ == "__main__":
    main()
