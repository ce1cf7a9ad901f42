"""lrp's AttnLRP and CP-LRP against LXT 2.1 on tiny random-weight transformers.

    LRP_BENCH_VENV=/work/cmpvenv bash benchmarks/run.sh lxt_compare.py
    bash benchmarks/run.sh lxt_compare.py [--models llama bert vit] [--no-tf4]
                                          [--out benchmarks/RESULTS.md]
    bash benchmarks/run.sh lxt_compare.py --faithfulness DIR   # the example's trained BERT

Models (``transformer_models.py``): Hugging Face LLaMA, Qwen2, Gemma3, BERT (sequence
classifier), GPT-2 and torchvision's VisionTransformer, 2 layers, hidden 32, all
parameters redrawn at a scale where attention is far from uniform, float64, a batch of
2 sequences of 10 random tokens (ViT: 2 random 32x32 images), the predicted token
after the last position (BERT, ViT: the predicted class).  The same ``state_dict``
goes to both tools.

LXT runs in its own process per case (``lxt_side.py``): it patches model classes
process-wide with no undo, and LXT 2.1 needs transformers 4.52.4 (it imports modules
that transformers 5 removed), which ``run.sh`` installs into ``$VENV/lxt-deps`` next to
zennit 0.5.1 (LXT's ViT recipe needs zennit >= 0.5).  lrp runs in this process on the
environment's transformers (5.x), and once more on 4.52.4 in a subprocess (``--no-tf4``
skips that).  Each LXT rule is compared where LXT 2.1 has it: its ``attnLRP`` and
``cp_LRP`` patch maps for LLaMA, Qwen2, Gemma3 and GPT-2, ``attnLRP`` for BERT,
``cp_LRP`` for the ViT, and its ViT recipe with zennit's Gamma on ``Conv2d`` and
``Linear`` (LXT's ``examples/vit_torch.py``).  LXT's efficient rules leave linear
layers with their plain gradient, as lrp's presets ``AttnLRP()`` and ``CPLRP()`` do
by default (``epsilon=0``: :class:`lrp.rules.Gradient`).

Reported per model and rule: the maximum relative difference ``max|ours - LXT| /
max|LXT|`` of the relevance at the input embeddings (pixels), the smallest cosine of
the per-token maps (per-pixel maps summed over channels) over the batch, conservation
``sum R / explained logit`` of both, and lrp's coverage audit.  Then CP-LRP on
bias-free versions (every bias and additive position/type embedding zeroed), where it
must conserve the logit, for these models and for architectures LXT does not cover
(Mistral, Phi-3, RoBERTa, DistilBERT, T5's encoder, ``nn.TransformerEncoder``).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if __name__ == "__main__":
    sys.path.insert(1, os.path.dirname(HERE))  # this checkout's lrp before an installed one

import transformer_models as tm  # noqa: E402
from results import write_section  # noqa: E402

#: LXT 2.1's rules per model (its patch maps; "gamma": its ViT recipe with zennit's Gamma).
LXT_RULES = {"llama": ["attnlrp", "cplrp"], "qwen2": ["attnlrp", "cplrp"],
             "gemma3": ["attnlrp", "cplrp"], "bert": ["attnlrp"], "gpt2": ["attnlrp", "cplrp"],
             "vit": ["cplrp", "gamma"]}
OTHER_MODELS = ["mistral", "phi3", "roberta", "distilbert", "t5-encoder", "torch-encoder"]
GAMMA = 0.25
RULE_NAMES = {"attnlrp": "AttnLRP()", "cplrp": "CPLRP()",
              "gamma": f"CPLRP(gamma={GAMMA})",
              "gamma-generalized": f"CPLRP() + GeneralizedGamma({GAMMA})",
              "gamma-as-lxt": f"CPLRP() + GeneralizedGamma({GAMMA}), out_proj LRP-0"}
#: Variants of lrp's gamma preset that isolate its two differences to LXT's ViT recipe.
GAMMA_VARIANTS = ["gamma-generalized", "gamma-as-lxt"]
BATCH, LENGTH, IMAGE = 2, 10, 32


def lxt_deps() -> str:
    """The directory holding LXT's transformers 4.52.4 and zennit 0.5.1 (``run.sh``)."""
    return os.environ.get("LRP_LXT_DEPS") or os.path.join(
        os.path.dirname(os.path.dirname(sys.executable)), "lxt-deps")


def run_with_lxt_deps(args: List[str]) -> subprocess.CompletedProcess:
    """Run ``python args...`` with LXT's dependencies first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [lxt_deps(), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable] + args, env=env, capture_output=True, text=True)


# ------------------------------------------------------------------------------ cases

def make_case(name: str, bias_free: bool = False, seed: int = 0) -> dict:
    """Model (float64, redrawn weights), inputs and the predicted target."""
    model = tm.randomize(tm.build(name, seed), seed).double()
    if bias_free:
        tm.make_bias_free(model)
    if name == "vit":
        inputs = tm.image_inputs(BATCH, IMAGE).double()
        kind = "cls"
    else:
        inputs = tm.token_inputs(BATCH, LENGTH)
        kind = tm.TOKEN_MODELS[name][1]
    with torch.no_grad():
        logits = tm.logits_of(model(inputs))
    target = (logits[:, -1] if logits.dim() == 3 else logits).argmax(1)
    logit = tm.explained_logit(logits, kind, target)
    return {"model": name, "module": model, "kind": kind, "inputs": inputs, "target": target,
            "logit": logit, "dtype": torch.float64}


def lrp_composite(rule: str, gamma: float = GAMMA):
    from lrp.composites import CPLRP, AttnLRP
    if rule == "attnlrp":
        return AttnLRP()
    if rule == "cplrp":
        return CPLRP()
    if rule == "gamma":
        return CPLRP(gamma=gamma)
    if rule in GAMMA_VARIANTS:
        return generalized_gamma(gamma, out_proj_gamma=rule == "gamma-generalized")
    raise KeyError(rule)


def generalized_gamma(gamma: float, out_proj_gamma: bool):
    """CP-LRP with generalized Gamma (Andéol et al.; zennit >= 0.5's ``Gamma``, the one
    LXT's ViT recipe uses) on ``Conv2d`` and ``Linear``.  ``out_proj_gamma=False``: as
    LXT, ``nn.MultiheadAttention``'s ``out_proj`` keeps its plain gradient (LRP-0): the
    attention runs it as a functional call, so zennit's hook on it never fires."""
    from lrp.composites import CPLRP, Composite, GlobalTypeMap
    from lrp.rules import Epsilon, GeneralizedGamma
    items = [((nn.Conv2d, nn.Linear), GeneralizedGamma(gamma, epsilon=1e-6))]
    if not out_proj_gamma:  # the first match wins
        items.insert(0, (nn.modules.linear.NonDynamicallyQuantizableLinear, Epsilon(0.0)))
    return Composite(*CPLRP().primitives, GlobalTypeMap(items),
                     name=RULE_NAMES["gamma" if out_proj_gamma else "gamma-as-lxt"])


def ours(case: dict, rule: str, audit: str = "warn"):
    """lrp's explanation of a case: ``(relevance, explained logits, audit report)``."""
    import lrp
    from lrp.transformers import explain_tokens
    composite = lrp_composite(rule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case["model"] == "vit":
            e = lrp.explain(case["module"], case["inputs"], composite, case["target"], audit=audit)
        else:
            e = explain_tokens(case["module"], case["inputs"], composite, target=case["target"],
                               audit=audit)
    logit = e.output.gather(1, e.target[:, None]).squeeze(1)
    return e.relevance.detach(), logit.detach(), e.audit


def lxt(case: dict, rule: str, tmp: str, identity_epsilon: Optional[float] = None) -> dict:
    """LXT's relevance of a case, computed in its own process (``lxt_side.py``);
    ``identity_epsilon`` replaces the shift 1e-10 of LXT's identity rule (diagnostic)."""
    path, out = os.path.join(tmp, "case.pt"), os.path.join(tmp, "lxt.pt")
    torch.save({"model": case["model"], "rule": rule, "dtype": case["dtype"],
                "state_dict": case["module"].state_dict(), "inputs": case["inputs"],
                "target": case["target"], "gamma": GAMMA if rule == "gamma" else None,
                "identity_epsilon": identity_epsilon}, path)
    proc = run_with_lxt_deps([os.path.join(HERE, "lxt_side.py"), "explain", path, out])
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return torch.load(out, weights_only=False)


def ours_on_tf4(case: dict, rules: List[str], tmp: str) -> Dict[str, Tensor]:
    """lrp's relevance of a case with transformers 4.52.4, in a subprocess."""
    path, out = os.path.join(tmp, "ours4.pt"), os.path.join(tmp, "ours4_out.pt")
    torch.save({"model": case["model"], "state_dict": case["module"].state_dict(),
                "inputs": case["inputs"], "target": case["target"], "rules": rules}, path)
    proc = run_with_lxt_deps([__file__, "--ours-case", path, out])
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return torch.load(out, weights_only=False)


def ours_case_worker(path: str, out: str) -> None:
    """Subprocess entry (transformers 4.52.4 first on the path): lrp on a saved case."""
    import transformers
    saved = torch.load(path, weights_only=False)
    case = make_case(saved["model"])
    case["module"].load_state_dict(saved["state_dict"])
    case.update(inputs=saved["inputs"], target=saved["target"])
    result = {rule: ours(case, rule, audit="off")[0] for rule in saved["rules"]}
    result["transformers"] = transformers.__version__
    torch.save(result, out)


# ---------------------------------------------------------------------------- metrics

def max_relative_difference(a: Tensor, b: Tensor) -> float:
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def token_map(relevance: Tensor) -> Tensor:
    """Per-token (per-pixel) map: the sum over the hidden (channel) dimension."""
    return relevance.sum(-1) if relevance.dim() == 3 else relevance.sum(1).flatten(1)


def min_cosine(a: Tensor, b: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(token_map(a), token_map(b), dim=1).min().item()


def conservation(relevance: Tensor, logit: Tensor) -> Tensor:
    return relevance.flatten(1).sum(1) / logit


def fmt_ratios(r: Tensor) -> str:
    return ", ".join(f"{v:.6f}" for v in r.tolist())


def fmt_audit(report) -> str:
    if report is None:
        return "-"
    if report.ok:
        return "empty"
    items = [str(f) for f in report.uncovered] + [f"never ran: {n}" for n in report.never_fired]
    return f"{len(items)}: " + "; ".join(items)[:160]


# ------------------------------------------------------------------------------- runs

def agreement_rows(names: List[str], tf4: bool, tmp: str) -> List[List[str]]:
    rows = []
    for name in names:
        case = make_case(name)
        rules = list(LXT_RULES[name])
        extra = GAMMA_VARIANTS if "gamma" in rules else []
        on_tf4: Dict[str, Tensor] = {}
        if tf4 and name != "vit":
            try:
                on_tf4 = ours_on_tf4(case, rules, tmp)
            except RuntimeError as err:
                on_tf4 = {"error": str(err)}
        for rule in rules + extra:
            lxt_rule = "gamma" if rule in GAMMA_VARIANTS else rule
            try:
                theirs = lxt(case, lxt_rule, tmp)
                relevance, logit, report = ours(case, rule)
                diff = max_relative_difference(relevance, theirs["relevance"])
                diff0 = "-"
                if 1e-12 < diff < 1e-3:  # LXT's identity rule shifts its input by 1e-10
                    exact = lxt(case, lxt_rule, tmp, identity_epsilon=0.0)["relevance"]
                    diff0 = f"{max_relative_difference(relevance, exact):.1e}"
                diff4 = "-"
                if rule in on_tf4:
                    diff4 = f"{max_relative_difference(on_tf4[rule], theirs['relevance']):.1e}"
                elif "error" in on_tf4:
                    diff4 = "error: " + on_tf4["error"][:60]
                row = [name, RULE_NAMES[rule], f"{diff:.1e}", diff4, diff0,
                       f"{min_cosine(relevance, theirs['relevance']):.8f}",
                       fmt_ratios(conservation(relevance, logit)),
                       fmt_ratios(conservation(theirs["relevance"], theirs["logit"])),
                       fmt_audit(report)]
            except Exception as err:  # noqa: BLE001 - a failure is a result
                row = [name, RULE_NAMES[rule], f"error: {type(err).__name__}: {str(err)[:100]}"] + [""] * 6
            print(" | ".join(row), flush=True)
            rows.append(row)
    return rows


def conservation_rows(names: List[str], tmp: str) -> List[List[str]]:
    """CP-LRP on bias-free models: ``max |sum R / logit - 1|`` over the batch, ours
    and LXT's (where LXT has CP-LRP for the model), and lrp's audit."""
    rows = []
    for name in names:
        case = make_case(name, bias_free=True)
        try:
            relevance, logit, report = ours(case, "cplrp")
            err = (conservation(relevance, logit) - 1).abs().max().item()
            attn, attn_logit, attn_report = ours(case, "attnlrp")
            attn_ratio = fmt_ratios(conservation(attn, attn_logit))
            theirs = "-"
            if "cplrp" in LXT_RULES.get(name, []):
                t = lxt(case, "cplrp", tmp)
                theirs = f"{(conservation(t['relevance'], t['logit']) - 1).abs().max().item():.1e}"
            audits = fmt_audit(report) if fmt_audit(report) == fmt_audit(attn_report) else \
                f"CP-LRP {fmt_audit(report)}; AttnLRP {fmt_audit(attn_report)}"
            row = [name, f"{err:.1e}", theirs, attn_ratio, audits]
        except Exception as err:  # noqa: BLE001
            row = [name, f"error: {type(err).__name__}: {str(err)[:100]}", "", "", ""]
        print(" | ".join(row), flush=True)
        rows.append(row)
    return rows


def faithfulness(folder: str, tmp: str) -> List[str]:
    """Token-hit scores of LXT's AttnLRP and ours on the example's trained model.

    ``folder`` is ``examples/transformers.py``'s ``OUT/token_task`` (``save_pretrained``
    files of a ``BertForSequenceClassification`` and ``sequences.npz``); see
    :func:`token_hits` for the score."""
    import numpy as np
    import transformers
    model = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    data = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(folder, "sequences.npz")).items()}
    return token_hits(model, data, tmp, folder)


def token_hits(model: nn.Module, data: Dict[str, Tensor], tmp: str,
               folder: Optional[str] = None) -> List[str]:
    """How often AttnLRP ranks a decisive token first, ours and LXT's.

    Parameters
    ----------
    model
        A Hugging Face ``BertForSequenceClassification`` (the one architecture of the
        example LXT 2.1 patches); its ``state_dict`` and config go to LXT's process.
    data
        ``input_ids`` and ``attention_mask`` ``(n, tokens)``, ``labels`` ``(n,)`` (the
        explained class) and ``trigger_position`` ``(n,)`` (the decisive token).

    A hit: the largest per-token relevance (sum over the embedding dimensions) among
    the tokens with ``attention_mask`` 1 is at ``trigger_position``.
    """
    from lrp.composites import AttnLRP
    from lrp.transformers import explain_tokens
    mask, labels, position = data["attention_mask"], data["labels"], data["trigger_position"]
    model = model.double()

    def hit_rate(tokens: Tensor) -> float:
        return float((tokens.masked_fill(mask == 0, -torch.inf).argmax(1) == position).double().mean())

    results = []
    for label, composite in (("lrp AttnLRP()", AttnLRP()),
                             ("lrp AttnLRP(epsilon=1e-6)", AttnLRP(epsilon=1e-6)),
                             ("gradient x input", None)):
        e = explain_tokens(model, data["input_ids"], composite, target=labels,
                           attention_mask=mask, audit="off")
        results.append((label, hit_rate(e.tokens)))
    path, out = os.path.join(tmp, "faith.pt"), os.path.join(tmp, "faith_out.pt")
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict(),
                "data": data}, path)
    proc = run_with_lxt_deps([os.path.join(HERE, "lxt_side.py"), "faithfulness", path, out])
    if proc.returncode:
        results.append(("LXT AttnLRP", f"error: {proc.stderr.strip().splitlines()[-1]}"))
    else:
        results.append(("LXT AttnLRP", hit_rate(torch.load(out, weights_only=False)["tokens"])))
    lines = [f"| {label} | " + (f"{v:.1%}" if isinstance(v, float) else v) + " |"
             for label, v in results]
    for line in lines:
        print(line, flush=True)
    return lines


# ------------------------------------------------------------------------------- main

def versions() -> str:
    from importlib.metadata import version

    import torchvision
    import transformers

    import lrp
    proc = run_with_lxt_deps(["-c", "import transformers, zennit; from importlib.metadata import "
                              "version; print(transformers.__version__, version('zennit'))"])
    lxt_env = proc.stdout.split() if proc.returncode == 0 else ["?", "?"]
    return (f"lrp {lrp.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"transformers {transformers.__version__}; LXT {version('lxt')} with transformers "
            f"{lxt_env[0]} and zennit {lxt_env[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(LXT_RULES),
                        help="models compared with LXT (default: all of LXT's)")
    parser.add_argument("--others", nargs="*", default=OTHER_MODELS,
                        help="models LXT does not cover, for the conservation table")
    parser.add_argument("--no-tf4", action="store_true",
                        help="skip running lrp once more on transformers 4.52.4")
    parser.add_argument("--faithfulness", metavar="DIR",
                        help="examples/transformers.py's token_task folder: token-hit scores")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--ours-case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_case:
        ours_case_worker(*args.ours_case)
        return
    torch.set_num_threads(min(2, torch.get_num_threads()))
    header = (f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores; "
              f"{versions()}.")
    print(header, flush=True)
    lines = [header, ""]
    with tempfile.TemporaryDirectory() as tmp:
        if args.faithfulness:
            lines += ["| method | decisive token ranked first |", "|---|---|"]
            lines += faithfulness(args.faithfulness, tmp)
            write_section(args.out, "Faithfulness against LXT", lines)
            return
        lines += ["| model | lrp composite | max rel. diff. (transformers 5) | (transformers 4.52.4) "
                  "| (LXT's identity shift 1e-10 set to 0) | min cosine of token maps | "
                  "sum R / logit, ours | sum R / logit, LXT | audit (ours) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in agreement_rows(args.models, not args.no_tf4, tmp)]
        lines += ["", "CP-LRP on bias-free models: max over the batch of |sum R / logit - 1|; "
                  "AttnLRP's sum R / logit for reference.", "",
                  "| model | CP-LRP, ours | CP-LRP, LXT | AttnLRP sum R / logit, ours | audit (ours) |",
                  "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |"
                  for r in conservation_rows(args.models + list(args.others), tmp)]
    write_section(args.out, "Transformers: agreement with LXT 2.1 (float64)", lines)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
