"""``lrp text``: tiny Hugging Face models (random weights, tokenizers built offline) saved
with ``save_pretrained``, explained from the command line and checked against
:func:`lrp.transformers.explain_tokens` called directly."""
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")  # in the test extra: runs in CI

from lrp import cli  # noqa: E402
from lrp.composites import AttnLRP, CPLRP  # noqa: E402
from lrp.text import merge_words  # noqa: E402
from lrp.transformers import explain_tokens  # noqa: E402

CORPUS = ["The capital of France is Paris.", "The capital of Italy is Rome.",
          "The unbelievable movie was great.", "A bad movie, not good at all."]
BERT_WORDS = ["the", "a", "movie", "was", "great", "bad", "good", "not", "at", "all", "un",
              "##believ", "##able", ".", ","]


def save_bert(path: Path) -> None:
    """A BERT sequence classifier (2 labels) with a WordPiece tokenizer from a vocab file."""
    path.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(str(path / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def save_gpt2(path: Path) -> None:
    """A GPT-2 causal LM with a byte-level BPE tokenizer trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>")
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                     n_positions=32, bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _start(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("FORCE_COLOR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(cli.__file__).parents[2]), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-m", "lrp", "text", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """The saved models, and the command-line subprocesses started on them at once."""
    tmp = tmp_path_factory.mktemp("text")
    missing = _start(["--model", tmp / "no-such-dir", "--out", tmp / "never", "hello"], tmp)
    save_gpt2(tmp / "gpt2")
    run = _start(["--model", tmp / "gpt2", "--out", tmp / "gpt2-out", "--merge-words",
                  "The capital of France is"], tmp)
    save_bert(tmp / "bert")
    yield tmp, run, missing
    for proc in (run, missing):
        if proc.poll() is None:
            proc.kill()


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def load(path: Path):
    auto = (transformers.AutoModelForCausalLM if "gpt2" in path.name
            else transformers.AutoModelForSequenceClassification)
    model = auto.from_pretrained(path, local_files_only=True).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


class Spans(HTMLParser):
    def __init__(self):
        super().__init__()
        self.values, self.texts, self._in = [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "data-relevance" in attrs:
            self.values.append(float(attrs["data-relevance"]))
            self.texts.append("")
            self._in = True

    def handle_data(self, data):
        if self._in:
            self.texts[-1] += data

    def handle_endtag(self, tag):
        self._in = False


def page(out: Path):
    parser = Spans()
    parser.feed((out / "tokens.html").read_text(encoding="utf-8"))
    return parser.texts, np.array(parser.values)


def close(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(b).max(), 1e-12)
    return a.shape == b.shape and np.abs(a - b).max() <= 1e-6 * scale


# --------------------------------------------------------------------------- end to end
def test_cli_text_end_to_end_in_a_subprocess(dirs):
    tmp, run, _ = dirs
    code, out, err = finish(run)
    assert code == 0, err
    assert "Traceback" not in err
    html, png = tmp / "gpt2-out" / "tokens.html", tmp / "gpt2-out" / "tokens.png"
    assert html.is_file() and png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, tokenizer = load(tmp / "gpt2")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    direct = explain_tokens(model, ids, AttnLRP())
    words, expected = merge_words(tokenizer.convert_ids_to_tokens(ids[0].tolist()),
                                  direct.tokens[0].numpy())
    texts, values = page(tmp / "gpt2-out")
    assert texts == words == ["The", "capital", "of", "France", "is"]
    assert close(values, expected)
    target = int(direct.target[0])
    first = out.splitlines()[0]  # not a terminal: plain text with the values
    assert "\x1b" not in out and first.startswith("The[") and "France[" in first
    assert f"(id {target})" in out and f"logit {float(direct.output[0, target]):.4g}" in out
    assert str(html) in out


def test_cli_text_classifier_target_label_matches_explain_tokens(dirs, capsys):
    tmp, _, _ = dirs
    text = "the unbelievable movie was bad"
    code = cli.main(["text", "--model", str(tmp / "bert"), "--target", "Positive",
                     "--composite", "CPLRP", "--out", str(tmp / "bert-out"), text])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    model, tokenizer = load(tmp / "bert")
    enc = tokenizer(text, return_tensors="pt")
    direct = explain_tokens(model, enc.input_ids, CPLRP(), target=1,
                            attention_mask=enc.attention_mask)
    texts, values = page(tmp / "bert-out")
    assert texts == ["[CLS]", "the", "un", "believ", "able", "movie", "was", "bad", "[SEP]"]
    assert close(values, direct.tokens[0])
    assert "explains class 1 (positive)" in captured.out
    assert f"logit {float(direct.output[0, 1]):.4g}" in captured.out


def test_cli_text_merged_words_sum_the_pieces(dirs, capsys):
    tmp, _, _ = dirs
    text = "the unbelievable movie"
    assert cli.main(["text", "--model", str(tmp / "bert"), "--merge-words", "--out",
                     str(tmp / "merged"), text]) == 0
    out = capsys.readouterr().out
    model, tokenizer = load(tmp / "bert")
    enc = tokenizer(text, return_tensors="pt")
    direct = explain_tokens(model, enc.input_ids, AttnLRP(), attention_mask=enc.attention_mask)
    texts, values = page(tmp / "merged")
    pieces = direct.tokens[0].double().numpy()
    assert texts == ["[CLS]", "the", "unbelievable", "movie", "[SEP]"]
    assert close(values, [pieces[0], pieces[1], pieces[2:5].sum(), pieces[5], pieces[6]])
    assert "unbelievable[" in out


def test_cli_text_gradient_contrast_position_against_autograd(dirs, capsys):
    """``--composite gradient``: per-token gradient x input of the logit difference,
    computed here with autograd on the input embeddings."""
    tmp, _, _ = dirs
    text = "The capital of Italy is"
    code = cli.main(["text", "--model", str(tmp / "gpt2"), "--composite", "gradient",
                     "--target", "Rome", "--contrast", "\u0120Paris", "--position", "3",
                     "--out", str(tmp / "grad-out"), text])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    model, tokenizer = load(tmp / "gpt2")
    ids = tokenizer(text, return_tensors="pt").input_ids
    rome, paris = tokenizer.convert_tokens_to_ids(["\u0120Rome", "\u0120Paris"])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits[0, 3]
    (logits[rome] - logits[paris]).backward()
    expected = (embeds * embeds.grad).sum(-1)[0]
    _, values = page(tmp / "grad-out")
    assert close(values, expected.detach())
    diff = float((logits[rome] - logits[paris]).detach())
    assert f"'\u0120Rome' (id {rome}) against '\u0120Paris' (id {paris})" in captured.out
    assert f"logit difference {diff:.4g}" in captured.out
    assert "after position 3" in captured.out


# --------------------------------------------------------------------------- errors
def test_cli_text_missing_dir_exit_status_in_a_subprocess(dirs):
    tmp, _, missing = dirs
    code, out, err = finish(missing)
    assert code == 2 and "no such directory" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp / "never").exists()


def bert_masked_lm(path: Path) -> Path:
    path.mkdir()
    config = transformers.BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=1, intermediate_size=8)
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(path)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "no such directory"),
    ("not_a_model", "is not a model directory (no config.json)"),
    ("masked_lm", "BertForMaskedLM is neither a causal language model"),
    ("composite", "composite 'epsilon-plus' is not for text models; valid names: attn-lrp, cp-lrp, "),
    ("unknown_composite", "unknown composite 'shap'; valid names: epsilon-gamma-box"),
    ("token", "--target 'Zanzibar' is not a token of the vocabulary"),
    ("token_id", "--target 100000 is not in the vocabulary"),
    ("label", "--target 'neutral' is not a class of the model; give 0..1 or a label: negative"),
    ("position_classifier", "--position applies to causal language models only"),
    ("position_range", "--position 9 is outside the text's 5 tokens"),
    ("out_file", "is an existing file; give a directory"),
    ("empty", "the text is empty"),
])
def test_cli_text_errors(dirs, capsys, case, message):
    tmp, _, _ = dirs
    (tmp / "a-file").write_text("x")
    bert, gpt2 = str(tmp / "bert"), str(tmp / "gpt2")
    text = "The capital of France is"
    args = {
        "missing": ["--model", str(tmp / "nothing-here"), text],
        "not_a_model": ["--model", str(tmp), text],
        "masked_lm": ["--model", str(tmp / "mlm") if (tmp / "mlm").exists()
                      else str(bert_masked_lm(tmp / "mlm")), text],
        "composite": ["--model", gpt2, "--composite", "epsilon-plus", text],
        "unknown_composite": ["--model", gpt2, "--composite", "shap", text],
        "token": ["--model", gpt2, "--target", "Zanzibar", text],
        "token_id": ["--model", gpt2, "--target", "100000", text],
        "label": ["--model", bert, "--target", "neutral", "a movie"],
        "position_classifier": ["--model", bert, "--position", "1", "a movie"],
        "position_range": ["--model", gpt2, "--position", "9", text],
        "out_file": ["--model", gpt2, text],
        "empty": ["--model", gpt2, "  "],
    }[case]
    out = tmp / "a-file" if case == "out_file" else tmp / "never"
    assert cli.main(["text", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("lrp: error: ")
    assert not (tmp / "never").exists()
