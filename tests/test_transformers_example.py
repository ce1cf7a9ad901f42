"""``examples/transformers.py`` end to end: a tiny BERT trained on a token task whose
decisive token is known, AttnLRP / CP-LRP / gradient x input token-hit scores, the
figure, and the saved model and sequences (the documented format other tools read)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from lrp.composites import AttnLRP
from lrp.transformers import explain_tokens

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example():
    # not under the name "transformers": that is the Hugging Face package
    spec = importlib.util.spec_from_file_location("transformers_example",
                                                  ROOT / "examples" / "transformers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ran(example, tmp_path_factory):
    out = tmp_path_factory.mktemp("transformers-example")
    scores = example.main(["--out", str(out)])
    return out, scores


def test_sequences_follow_the_task(example):
    data = example.make_sequences(500, torch.Generator().manual_seed(3))
    ids, mask = data["input_ids"], data["attention_mask"]
    assert (ids[:, 0] == example.CLS).all()
    assert ((ids == example.PAD) == (mask == 0)).all()
    lengths = mask.sum(1)
    assert lengths.min() >= 1 + example.MIN_TOKENS and lengths.max() <= example.LENGTH
    for row, label, position in zip(ids.tolist(), data["labels"].tolist(),
                                    data["trigger_position"].tolist()):
        triggers = [j for j, token in enumerate(row) if token in example.TRIGGERS]
        assert triggers == [position]  # exactly one trigger, where recorded
        assert row[position] == example.TRIGGERS[label]
    # the trigger's position varies over the whole sequence
    assert set(data["trigger_position"].tolist()) == set(range(1, example.LENGTH))


def test_token_hit_against_a_loop(example):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(50, 6, generator=generator)
    mask = (torch.rand(50, 6, generator=generator) > 0.2).long()
    mask[:, 0] = 1
    position = torch.randint(0, 6, (50,), generator=generator)
    hits = 0
    for r, m, p in zip(tokens.tolist(), mask.tolist(), position.tolist()):
        best = max((v, j) for j, (v, keep) in enumerate(zip(r, m)) if keep)[1]
        hits += best == p
    assert example.token_hit(tokens, mask, position) == pytest.approx(hits / 50)


def test_example_scores_figure_and_saved_task(ran, example):
    out, scores = ran
    assert set(scores) == {"AttnLRP", "CP-LRP", "gradient x input"}
    # the decisive token comes first for the LRP presets, far more often than for
    # gradient x input (measured: 100 %, 100 %, 60.5 %)
    assert scores["AttnLRP"] >= 0.98 and scores["CP-LRP"] >= 0.98
    assert scores["gradient x input"] < scores["AttnLRP"] - 0.2
    with Image.open(out / "transformers.png") as picture:
        assert picture.format == "PNG" and min(picture.size) > 400
        assert np.asarray(picture.convert("RGB")).std() > 10

    folder = out / "token_task"
    task = json.loads((folder / "task.json").read_text())
    assert task["token_hit"] == scores and task["n"] == example.N_HELD_OUT
    assert task["held_out_accuracy"] >= 0.99
    with np.load(folder / "sequences.npz") as data:
        saved = {k: torch.from_numpy(data[k]) for k in data.files}
    assert set(saved) == {"input_ids", "attention_mask", "labels", "trigger_position"}
    assert saved["input_ids"].shape == (example.N_HELD_OUT, example.LENGTH)
    assert all(v.dtype == torch.int64 for v in saved.values())
    # what a reader of the documented format gets reproduces the AttnLRP score
    model = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    e = explain_tokens(model, saved["input_ids"], AttnLRP(), target=saved["labels"],
                       attention_mask=saved["attention_mask"], audit="strict")
    assert e.audit.ok
    assert example.token_hit(e.tokens, saved["attention_mask"], saved["trigger_position"]) == \
        scores["AttnLRP"]
