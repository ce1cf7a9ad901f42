"""Speed and peak memory of AttnLRP / CP-LRP on transformers, relative to a plain
input-gradient pass, against LXT 2.1's ratio on the same models and batch.

    LRP_BENCH_VENV=/work/cmpvenv bash benchmarks/run.sh transformer_speed.py
    bash benchmarks/run.sh transformer_speed.py [--models llama vit] [--repeats 5]
        [--rounds 1] [--batch 8] [--length 128] [--no-lxt] [--no-memory]
        [--out benchmarks/RESULTS.md]

Models (``transformer_models.speed_case``: random weights, float32, eval, parameters
not requiring gradients as in LXT's examples): a LLaMA-shaped Hugging Face
``LlamaForCausalLM`` (4 layers, hidden 256, 4 heads, MLP 688, vocabulary 1000) on
``batch`` x ``length`` random tokens, explaining the predicted next token after the
last position, and torchvision's ViT-B/16 on ``batch`` random 224x224 images,
explaining the predicted class.

``explain_tokens`` computes the LLaMA's logits at the explained position only
(``logits_to_keep``); the rows "..., all logits" compute them at every position, as
the gradient passes and LXT's recipe do, which shows what the explanation itself costs.

Speed: each repeat times the plain gradient pass (forward + ``autograd.grad`` of the
explained logits to the input embeddings / pixels) and the method back to back, after a
warm-up; the table gives the method's median seconds and the median of the paired
ratios (``benchmarks/speed.py``'s ``paired``), so load changes on the machine cancel.
LXT runs in its own process (``lxt_side.py speed``) on transformers 4.52.4 with its own
gradient baseline: the same model with its patches switched off, paired the same way.
``--rounds N`` alternates lrp's and LXT's turns N times and reports the medians over
rounds, with each round's ratio (a drift of the machine between the two turns then
averages out).
Memory: a fresh process per cell runs one call; the figure is its peak resident set
during the call minus the resident set before it (model and input loaded).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if __name__ == "__main__":
    sys.path.insert(1, os.path.dirname(HERE))  # this checkout's lrp before an installed one

import transformer_models as tm  # noqa: E402
from lxt_compare import run_with_lxt_deps  # noqa: E402
from results import write_section  # noqa: E402
from speed import paired, peak_mb  # noqa: E402

#: Our methods per model; LXT's recipes per model (its rule names, see lxt_side.py).
OURS = {"llama": ["AttnLRP", "AttnLRP, all logits", "AttnLRP(epsilon=1e-6)", "CPLRP",
                  "CPLRP, all logits"],
        "vit": ["AttnLRP", "AttnLRP(epsilon=1e-6)", "CPLRP", "CPLRP(gamma=0.25)"]}
LXT = {"llama": [("attnLRP", {"rule": "attnlrp"}), ("cp_LRP", {"rule": "cplrp"})],
       "vit": [("cp_LRP", {"rule": "cplrp"}), ("cp_LRP + zennit Gamma 0.25", {"rule": "cplrp",
                                                                          "gamma": 0.25})]}


#: explain_tokens computes the logits of the explained position only (logits_to_keep);
#: these rows compute all positions' logits, as the gradient passes and LXT do.
ALL_LOGITS = ", all logits"


def composite(method: str):
    from lrp.composites import CPLRP, AttnLRP
    method = method.replace(ALL_LOGITS, "")
    return {"AttnLRP": lambda: AttnLRP(),
            "AttnLRP(epsilon=1e-6)": lambda: AttnLRP(epsilon=1e-6),
            "CPLRP": lambda: CPLRP(),
            "CPLRP(gamma=0.25)": lambda: CPLRP(gamma=0.25)}[method]()


def gradient_pass(name: str, model: nn.Module, x: Tensor, target: Tensor) -> Callable[[], Tensor]:
    """The plain input-gradient pass, as the explanation's input: token embeddings
    (computed without a graph, as ``explain_tokens`` does) or pixels."""
    def run():
        if name == "vit":
            xg = x.detach().requires_grad_(True)
            chosen = model(xg).gather(1, target[:, None])
        else:
            with torch.no_grad():
                embeds = model.get_input_embeddings()(x)
            xg = embeds.requires_grad_(True)
            # no key/value cache, as explain_tokens and LXT's baseline
            chosen = tm.logits_of(model(inputs_embeds=xg, use_cache=False))[:, -1].gather(
                1, target[:, None])
        return torch.autograd.grad(chosen.sum(), xg)[0]
    return run


def method_pass(name: str, method: str, model: nn.Module, x: Tensor,
                target: Tensor) -> Callable[[], Tensor]:
    import lrp
    from lrp.transformers import explain_tokens
    c = composite(method)
    if name == "vit":
        return lambda: lrp.explain(model, x, c, target, audit="off").relevance
    kwargs = {"logits_to_keep": 0} if method.endswith(ALL_LOGITS) else None
    return lambda: explain_tokens(model, x, c, target=target, audit="off",
                                  model_kwargs=kwargs).relevance


# ---------------------------------------------------------------------------- memory

def memory_probe(name: str, method: str, batch: int, length: int) -> None:
    """Subprocess entry: one call of ``method`` (or ``gradient``), its peak RSS increase."""
    model, x, target = tm.speed_case(name, batch, length)
    fn = gradient_pass(name, model, x, target) if method == "gradient" else \
        method_pass(name, method, model, x, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peak = peak_mb(fn)
    print(json.dumps({"peak_mb": peak}))


def _last_json(proc: subprocess.CompletedProcess) -> Optional[dict]:
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None


def measure_memory(name: str, method: str, batch: int, length: int) -> Optional[float]:
    proc = subprocess.run([sys.executable, __file__, "--probe", name, method, str(batch),
                           str(length)], capture_output=True, text=True)
    result = _last_json(proc)
    return None if result is None else result["peak_mb"]


def lxt_spec(name: str, options: dict, batch: int, length: int, repeats: int) -> dict:
    return dict(options, model=name, batch=batch, length=length, repeats=repeats)


def lxt_speed(spec: dict) -> Tuple[Optional[dict], str]:
    proc = run_with_lxt_deps([os.path.join(HERE, "lxt_side.py"), "speed", json.dumps(spec)])
    result = _last_json(proc)
    if proc.returncode or result is None:
        return None, (proc.stderr.strip().splitlines() or ["?"])[-1][:100]
    return result, ""


def lxt_memory(spec: dict, method: str) -> Optional[float]:
    proc = run_with_lxt_deps([os.path.join(HERE, "lxt_side.py"), "memory", json.dumps(spec), method])
    result = _last_json(proc)
    return None if result is None else result["peak_mb"]


# ------------------------------------------------------------------------------ main

def cells(seconds, ratio, memory, note="") -> List[str]:
    return ["-" if seconds is None else f"{seconds:.3f}", "-" if ratio is None else f"{ratio:.2f}",
            "-" if memory is None else f"{memory:.0f}", note]


def _median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def run_model(name: str, args) -> List[str]:
    """The model's table.  Each round times lrp's methods in this process, then LXT's in
    its own; the table gives the medians over rounds (each round's figure a median of
    ``args.repeats`` paired repeats) and, with several rounds, each round's ratio, so
    that a drift of the machine's speed between lrp's and LXT's turn averages out."""
    label = {"llama": f"LLaMA-shaped (4 layers, hidden 256), batch {args.batch} x {args.length} tokens",
             "vit": f"ViT-B/16, batch {args.batch}, 224x224"}[name]
    lines = ["", f"### {label}", "",
             "| tool | method | seconds | ratio to its gradient pass | peak memory (MiB) | note |",
             "|---|---|---|---|---|---|"]
    model, x, target = tm.speed_case(name, args.batch, args.length)
    base = gradient_pass(name, model, x, target)
    fns = {method: method_pass(name, method, model, x, target) for method in OURS[name]}
    lxt = [] if args.no_lxt else LXT[name]
    specs = {label: lxt_spec(name, options, args.batch, args.length, args.repeats)
             for label, options in lxt}
    times: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
    errors: Dict[str, str] = {}
    for r in range(args.rounds):
        times.setdefault(("lrp", "gradient"), []).append((paired(base, base, args.repeats)[0], 1.0))
        for method, fn in fns.items():
            times.setdefault(("lrp", method), []).append(paired(base, fn, args.repeats))
        for label, spec in specs.items():
            result, note = lxt_speed(spec)
            if result is None:
                errors[label] = "error: " + note
                continue
            times.setdefault(("LXT", "gradient (patches off)"), []).append((result["base_seconds"], 1.0))
            times.setdefault(("LXT", label), []).append((result["seconds"], result["ratio"]))
        print(f"{name} round {r + 1}: " + ", ".join(
            f"{tool} {method} {values[-1][1]:.2f}" for (tool, method), values in times.items()
            if "gradient" not in method), flush=True)
    del model, fns, base
    memory: Dict[Tuple[str, str], Optional[float]] = {}
    if not args.no_memory:
        for method in ["gradient"] + OURS[name]:
            memory[("lrp", method)] = measure_memory(name, method, args.batch, args.length)
        for i, (label, spec) in enumerate(specs.items()):
            if i == 0:
                memory[("LXT", "gradient (patches off)")] = lxt_memory(spec, "gradient")
            memory[("LXT", label)] = lxt_memory(spec, "lxt")
    order = [("lrp", "gradient")] + [("lrp", m) for m in OURS[name]] + (
        [("LXT", "gradient (patches off)")] if specs else []) + [("LXT", label) for label in specs]
    rows = []
    for key in order:
        values = times.get(key, [])
        note = errors.get(key[1], "")
        if len(values) > 1 and "gradient" not in key[1]:
            note = "rounds: " + ", ".join(f"{ratio:.2f}" for _, ratio in values)
        rows.append(list(key) + cells(_median([s for s, _ in values]),
                                      _median([q for _, q in values]), memory.get(key), note))
        print(f"{name} | " + " | ".join(rows[-1]), flush=True)
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["llama", "vit"], choices=["llama", "vit"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate lrp's and LXT's timings this many times")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence (LLaMA)")
    parser.add_argument("--no-lxt", action="store_true", help="skip LXT")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        memory_probe(args.probe[0], args.probe[1], int(args.probe[2]), int(args.probe[3]))
        return
    import transformers

    import lrp
    proc = run_with_lxt_deps(["-c", "import transformers; print(transformers.__version__)"])
    header = (f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
              f"{torch.get_num_threads()} threads; lrp {lrp.__version__}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}; LXT 2.1 on transformers "
              f"{proc.stdout.strip() or '?'}. Median of {args.repeats} paired "
              "repeats after a warm-up" + (f", median over {args.rounds} rounds that alternate "
                                           "lrp and LXT." if args.rounds > 1 else "."))
    print(header, flush=True)
    lines = [header]
    for name in args.models:
        lines += run_model(name, args)
    write_section(args.out, "Transformers: speed and memory against LXT 2.1", lines)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
