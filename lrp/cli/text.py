"""``lrp text``: token relevance of a Hugging Face model saved with ``save_pretrained``.

The model directory holds the model (``config.json`` and its weights) and its
tokenizer, both written with ``save_pretrained``.  Whether it is a causal language
model or a sequence classifier is read from ``config.architectures``
(``...ForCausalLM`` / ``...LMHeadModel``, or ``...ForSequenceClassification``).
Nothing is downloaded (``local_files_only=True``); ``transformers`` is imported here
only.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from .common import CLIError, check_cmap, check_out, composite_name, make_composite
from ..models import first_line

#: The ``--composite`` names (of :data:`lrp.cli.common.COMPOSITES`) for text models.
TEXT_COMPOSITES = ("attn-lrp", "cp-lrp", "gradient")
CAUSAL, CLASSIFIER = "causal language model", "sequence classifier"


def text_composite(name: str) -> str:
    """The canonical ``--composite`` name (any case and spelling: ``AttnLRP``, ``cplrp``);
    only the transformer presets and gradient x input."""
    canonical = composite_name(name)
    if canonical not in TEXT_COMPOSITES:
        raise CLIError(f"composite {name!r} is not for text models; valid names: "
                       f"{', '.join(TEXT_COMPOSITES)}")
    return canonical


@dataclass
class TextModel:
    """A model directory: its config, tokenizer and kind, and the model once loaded."""

    path: Path
    config: Any
    tokenizer: Any
    kind: str
    architecture: str
    model: Any = None


def model_kind(architectures: Optional[List[str]], directory: str) -> str:
    """:data:`CAUSAL` or :data:`CLASSIFIER` from ``config.architectures``."""
    names = list(architectures or [])
    if not names:
        raise CLIError(f"{directory}: config.json names no architecture, so it is unknown whether "
                       "the model is a causal language model or a sequence classifier")
    for name in names:
        if name.endswith("ForSequenceClassification"):
            return CLASSIFIER
        if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
            return CAUSAL
    raise CLIError(f"{directory}: {names[0]} is neither a causal language model (...ForCausalLM) "
                   "nor a sequence classifier (...ForSequenceClassification)")


def check_model_dir(directory: str) -> Path:
    """The directory exists and has a ``config.json`` (checked before anything loads)."""
    path = Path(directory)
    if not path.exists():
        raise CLIError(f"--model {directory}: no such directory")
    if not path.is_dir():
        raise CLIError(f"--model {directory} is a file; give the directory written by "
                       "model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)")
    if not (path / "config.json").is_file():
        raise CLIError(f"--model {directory} is not a model directory (no config.json); save the "
                       "model and its tokenizer there with save_pretrained(DIR)")
    return path


def open_text_model(directory: str) -> TextModel:
    """The config and the tokenizer of a ``save_pretrained`` directory, offline (the
    weights load later, with :func:`load_weights`, once the options are checked).

    Raises
    ------
    CLIError
        Without ``transformers``, for a directory without a model or a tokenizer, or
        with a model that is neither a causal LM nor a sequence classifier.
    """
    path = check_model_dir(directory)
    try:
        import transformers
    except ImportError:
        raise CLIError("lrp text needs the transformers package: pip install 'lrp[transformers]'") \
            from None
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise CLIError(f"--model {directory}: cannot read config.json: {first_line(err)}") from None
    kind = model_kind(getattr(config, "architectures", None), directory)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CLIError(f"--model {directory}: cannot load its tokenizer ({first_line(err)}); save it "
                       "there with tokenizer.save_pretrained(DIR)") from None
    if isinstance(tokenizer, bool) or not callable(tokenizer):
        raise CLIError(f"--model {directory}: no tokenizer; save it with tokenizer.save_pretrained(DIR)")
    return TextModel(path, config, tokenizer, kind, config.architectures[0])


def load_weights(loaded: TextModel) -> None:
    """Load the model of :func:`open_text_model`'s directory (eval mode) into ``loaded.model``."""
    import transformers

    auto = (transformers.AutoModelForCausalLM if loaded.kind == CAUSAL
            else transformers.AutoModelForSequenceClassification)
    try:
        model = auto.from_pretrained(loaded.path, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise CLIError(f"--model {loaded.path}: cannot load the model: {first_line(err)}") from None
    loaded.model = model.eval()


# --------------------------------------------------------------------------- targets
def vocabulary_size(config: Any) -> int:
    """The number of next-token logits of a causal LM."""
    size = getattr(config, "vocab_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "vocab_size", None)
    if size is None:
        raise CLIError("config.json gives no vocab_size")
    return int(size)


def token_id(value: str, option: str, loaded: TextModel) -> int:
    """A vocabulary id from ``--target`` / ``--contrast`` of a causal LM: an id, a word
    the tokenizer encodes as one token after a space (``Paris`` -> ``ĠParis``) or on
    its own, or a token as written in the vocabulary (``ĠParis``, ``<|endoftext|>``)."""
    size = vocabulary_size(loaded.config)
    tokenizer = loaded.tokenizer
    if value.lstrip("-").isdigit():
        k = int(value)
        if not 0 <= k < size:
            raise CLIError(f"{option} {k} is not in the vocabulary (ids 0..{size - 1})")
        return k
    for text in (" " + value, value):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == 1 and ids[0] < size:
            return int(ids[0])
    vocab = tokenizer.get_vocab()
    if value in vocab and vocab[value] < size:
        return int(vocab[value])
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(value, add_special_tokens=False))
    raise CLIError(f"{option} {value!r} is not a token of the vocabulary (the tokenizer splits it "
                   f"into {len(pieces)}: {' '.join(pieces)}); give one token or a token id")


def class_id(value: str, option: str, loaded: TextModel) -> int:
    """A class id from ``--target`` / ``--contrast`` of a classifier: an id or a label."""
    config = loaded.config
    n = int(config.num_labels)
    names = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    if value.lstrip("-").isdigit():
        k = int(value)
        if not 0 <= k < n:
            raise CLIError(f"{option} {k} is not a class of the model (0..{n - 1})")
        return k
    labels = {v.lower(): k for k, v in names.items()}
    if value.lower() in labels:
        return labels[value.lower()]
    raise CLIError(f"{option} {value!r} is not a class of the model; give 0..{n - 1} or a label: "
                   + ", ".join(names[k] for k in sorted(names)))


def describe(k: int, loaded: TextModel) -> str:
    """``'ĠParis' (id 123)`` for a causal LM, ``1 (positive)`` for a classifier."""
    if loaded.kind == CAUSAL:
        return f"{loaded.tokenizer.convert_ids_to_tokens(k)!r} (id {k})"
    label = (loaded.config.id2label or {}).get(k, str(k))
    return str(k) if str(label) == str(k) else f"{k} ({label})"


# --------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    """``lrp text``: explain a text with a saved Hugging Face model."""
    from tqdm import tqdm

    from ..image import save
    from ..text import detect_scheme, to_ansi, to_html, to_png

    name = text_composite(args.composite)
    check_cmap(args.cmap)
    if not args.text.strip():
        raise CLIError("the text is empty")
    check_font(args.font)
    out = check_out(args.out)
    check_model_dir(args.model)
    with tqdm(total=3, desc="loading tokenizer", disable=None, file=sys.stderr,
              leave=False) as progress:
        loaded = open_text_model(args.model)
        progress.update()
        causal = loaded.kind == CAUSAL
        if args.position is not None and not causal:
            raise CLIError("--position applies to causal language models only; "
                           f"{args.model} holds a sequence classifier")
        parse = token_id if causal else class_id
        target = None if args.target is None else parse(args.target, "--target", loaded)
        contrast = None if args.contrast is None else parse(args.contrast, "--contrast", loaded)
        encoded = loaded.tokenizer(args.text, return_tensors="pt")
        input_ids = encoded["input_ids"]
        length = input_ids.shape[1]
        if length == 0:
            raise CLIError("the text gives no tokens")
        limit = getattr(loaded.config, "max_position_embeddings", None)
        if isinstance(limit, int) and length > limit:
            raise CLIError(f"the text is {length} tokens long; the model takes at most {limit}")
        position = -1 if args.position is None else args.position
        if causal and not -length <= position < length:
            raise CLIError(f"--position {position} is outside the text's {length} tokens")
        progress.set_description("loading model")
        load_weights(loaded)
        composite = make_composite(name, canonize=False)
        progress.update()
        progress.set_description("explaining")
        explanation = explain_text(loaded, input_ids, composite, target, position,
                                   encoded.get("attention_mask"), contrast)
        progress.update()
    if explanation.audit is not None and not explanation.audit.ok:
        print(f"lrp: warning: {explanation.audit}", file=sys.stderr)

    tokens = loaded.tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
    values = explanation.tokens[0].detach().float().cpu()
    target = int(explanation.target[0])
    output = explanation.output[0].detach().float()
    method = explanation.method or ("gradient x input" if composite is None else name)
    what = (f"the next token after position {position % length}:" if causal else "class")
    predicted = describe(int(output.argmax()), loaded)
    if contrast is None:
        lines = [f"explains {what} {describe(target, loaded)}, logit {float(output[target]):.4g} "
                 f"({method}); predicted {predicted}"]
    else:
        diff = float(output[target] - output[contrast])
        lines = [f"explains {what} {describe(target, loaded)} against {describe(contrast, loaded)}, "
                 f"logit difference {diff:.4g} ({method}); predicted {predicted}"]
    lines.append(f"sum of token relevance {float(values.sum()):.4g}")
    style = dict(merge=args.merge_words, scheme=detect_scheme(loaded.tokenizer.get_vocab()),
                 special=set(loaded.tokenizer.all_special_tokens), cmap=args.cmap)
    print(to_ansi(tokens, values.numpy(), colorbar=True, stream=sys.stdout, **style))
    for line in lines:
        print(line)
    label = [f"{Path(args.model).name} ({loaded.architecture})", *lines]
    page = out / "tokens.html"
    out.mkdir(parents=True, exist_ok=True)
    page.write_text(to_html(tokens, values.numpy(), label=label, **style), encoding="utf-8")
    image = save(to_png(tokens, values.numpy(), label=label, font=args.font, **style),
                 out / "tokens.png")
    print(f"-> {page}, {image}")
    return 0


def check_font(font: Optional[str]) -> None:
    """``--font`` opens as a TrueType font (checked before anything loads)."""
    if font is None:
        return
    from PIL import ImageFont
    try:
        ImageFont.truetype(font, 12)
    except OSError as err:
        raise CLIError(f"--font {font}: cannot open it as a TrueType font ({first_line(err)})") from None


def explain_text(loaded: TextModel, input_ids, composite, target, position, attention_mask, contrast):
    """:func:`lrp.transformers.explain_tokens` with its errors as one-line :class:`CLIError`."""
    from ..transformers import explain_tokens

    try:
        with warnings.catch_warnings():  # the audit is reported once, by run()
            warnings.simplefilter("ignore")
            return explain_tokens(loaded.model, input_ids, composite, target=target,
                                  position=position if loaded.kind == CAUSAL else -1,
                                  attention_mask=attention_mask, contrast=contrast,
                                  audit="off" if composite is None else "warn")
    except ValueError as err:
        raise CLIError(first_line(err)) from None
    except RuntimeError as err:
        raise CLIError(f"the model failed on {input_ids.shape[1]} tokens: {first_line(err)}") from None


def register(sub) -> None:
    """Add the subcommand to the ``lrp`` parser's subparsers."""
    cmd = sub.add_parser(
        "text", help="colour the tokens of a text by relevance (Hugging Face model)",
        description="Explain a text with a Hugging Face causal language model (the next token) or "
                    "sequence classifier saved with save_pretrained (model and tokenizer in DIR; "
                    "nothing is downloaded). Prints the tokens coloured by relevance and writes "
                    "tokens.html and tokens.png to --out.")
    cmd.add_argument("text", metavar="TEXT", help="the text to explain")
    cmd.add_argument("--model", required=True, metavar="DIR",
                     help="directory written by model.save_pretrained and tokenizer.save_pretrained")
    cmd.add_argument("--composite", default="attn-lrp", metavar="NAME",
                     help="rule preset: " + ", ".join(TEXT_COMPOSITES) + " (gradient x input; any "
                          "case, with or without dashes; default: %(default)s)")
    cmd.add_argument("--target", default=None, metavar="ID_OR_TOKEN",
                     help="what to explain: for a causal LM the next token (an id, a word such as "
                          "Paris, or a vocabulary token such as ĠParis), for a classifier a class id "
                          "or label (default: the predicted one)")
    cmd.add_argument("--contrast", default=None, metavar="ID_OR_TOKEN",
                     help="explain the logit difference target - contrast (same forms as --target)")
    cmd.add_argument("--position", type=int, default=None, metavar="N",
                     help="causal LM: explain the next-token logits at token N (default -1, the last)")
    cmd.add_argument("--merge-words", action="store_true",
                     help="merge word pieces into words, summing their relevance")
    cmd.add_argument("--out", default="lrp-text", metavar="DIR",
                     help="output directory for tokens.html and tokens.png (default: %(default)s)")
    cmd.add_argument("--cmap", default="bwr",
                     help="colormap name or spec as for lrp heatmap (default: %(default)s)")
    cmd.add_argument("--font", default=None, metavar="TTF",
                     help="TrueType font for the PNG (default: Pillow's, ASCII only), e.g. "
                          "DejaVuSans.ttf")
    cmd.set_defaults(func=run)


__all__ = ["run", "register", "TEXT_COMPOSITES", "text_composite", "open_text_model", "load_weights",
           "TextModel"]
