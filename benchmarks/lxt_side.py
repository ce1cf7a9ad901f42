"""LXT 2.1's side of ``lxt_compare.py`` and ``transformer_speed.py``: one process per
case, never the process that runs lrp.

LXT patches model classes process-wide and has no undo, and LXT 2.1 imports modules
that transformers 5 removed (``transformers.modeling_attn_mask_utils``, and a copy of
``modeling_bert`` from 4.52.4), so its cases run here, on transformers 4.52.4 and
zennit 0.5.1 (LXT's ViT recipe needs ``zennit.core.ParamMod``, new in 0.5) from the
directory ``benchmarks/run.sh`` installs them to, put first on ``PYTHONPATH`` by the
caller.  This file imports LXT and never lrp.

    python lxt_side.py explain CASE.pt OUT.pt     # relevance of one case (lxt_compare.py)
    python lxt_side.py faithfulness CASE.pt OUT.pt  # token relevance of a trained BERT
    python lxt_side.py speed SPEC.json            # paired ratio to the plain gradient
    python lxt_side.py memory SPEC.json METHOD    # peak RSS increase of one call
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import types
from typing import Callable, Tuple

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transformer_models as tm  # noqa: E402

#: LXT's patch maps by our rule name; models absent from a map have no such map in LXT.
PATCH_MAPS = {"attnlrp": "attnLRP", "cplrp": "cp_LRP"}


def patch_map(model: str, rule: str) -> Tuple[types.ModuleType, dict]:
    """The module LXT patches for ``model`` and its patch map for ``rule`` (``"attnlrp"``,
    ``"cplrp"``; the ViT recipes ``"cplrp"`` and ``"gamma"`` both use ``cp_LRP``)."""
    if model == "vit":
        from torchvision.models import vision_transformer

        from lxt.efficient.models.vit_torch import cp_LRP
        return vision_transformer, cp_LRP
    lxt_module = importlib.import_module(f"lxt.efficient.models.{model}")
    name = PATCH_MAPS[rule]
    if not hasattr(lxt_module, name):
        raise KeyError(f"LXT 2.1 has no {name} patch map for {model}")
    return getattr(lxt_module, f"modeling_{model}"), getattr(lxt_module, name)


class Switch:
    """LXT's patches, switchable on and off to time the plain gradient of the same
    model in the same process (LXT itself has no undo).

    The attributes each patch target (class or module) has before and after
    ``monkey_patch`` are recorded, and so are the entries of transformers' attention
    registry ``ALL_ATTENTION_FUNCTIONS``, which LXT's CP-LRP attention patch rewrites
    in place (the registry is shared by every model class); :meth:`use` sets one
    state or the other.  ``speed`` checks that switching off restores the plain
    gradient bit for bit."""

    REGISTRY = "ALL_ATTENTION_FUNCTIONS"

    def __init__(self, module: types.ModuleType, patches: dict):
        from lxt.efficient import monkey_patch
        targets = [module] + [t for t in patches if t is not module]
        self.before = {id(t): (t, dict(vars(t))) for t in targets}
        registry = getattr(module, self.REGISTRY, None)
        self.registry = (registry, dict(registry.items())) if registry is not None else None
        monkey_patch(module, patches)
        self.after = {id(t): dict(vars(t)) for t in targets}
        self.registry_after = dict(registry.items()) if registry is not None else None

    def use(self, patched: bool) -> None:
        for key, (target, before) in self.before.items():
            after = self.after[key]
            state = after if patched else before
            for name in set(before) | set(after):
                if before.get(name, _MISSING) is after.get(name, _MISSING):
                    continue
                if name in state:
                    setattr(target, name, state[name])
                elif name in vars(target):
                    delattr(target, name)
        if self.registry is not None:
            registry, before = self.registry
            for name, value in (self.registry_after if patched else before).items():
                if registry[name] is not value:
                    registry[name] = value


_MISSING = object()


def token_relevance(model: nn.Module, kind: str, ids: Tensor, target: Tensor,
                    position: int = -1, attention_mask: Tensor = None) -> Tuple[Tensor, Tensor]:
    """LXT's recipe: relevance = input embeddings x their gradient, the explained
    logits summed over the batch as the backward's seed; returns
    ``(relevance (batch, tokens, hidden), explained logits (batch,))``."""
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    kwargs = {"use_cache": False} if kind == "lm" else {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    logits = tm.logits_of(model(inputs_embeds=embeds, **kwargs))
    chosen = tm.explained_logit(logits, kind, target, position)
    (grad,) = torch.autograd.grad(chosen.sum(), embeds)
    return (embeds * grad).detach(), chosen.detach()


def pixel_relevance(model: nn.Module, x: Tensor, target: Tensor,
                    gamma: float = None) -> Tuple[Tensor, Tensor]:
    """LXT's ViT recipe (``examples/vit_torch.py`` of LXT): ``cp_LRP`` patches, and for
    ``gamma`` zennit's Gamma on ``Conv2d`` and ``Linear`` through LXT's zennit patch."""
    composite = None
    if gamma is not None:
        from zennit.composites import LayerMapComposite
        from zennit.rules import Gamma

        from lxt.efficient import monkey_patch_zennit
        monkey_patch_zennit()
        composite = LayerMapComposite([(nn.Conv2d, Gamma(gamma)), (nn.Linear, Gamma(gamma))])
        composite.register(model)
    try:
        x = x.detach().requires_grad_(True)
        chosen = model(x).gather(1, target[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(chosen.sum(), x)
    finally:
        if composite is not None:
            composite.remove()
    return (x * grad).detach(), chosen.detach()


def explain_case(case_path: str, out_path: str) -> None:
    """Load one case written by ``lxt_compare.py``, patch, explain, save."""
    case = torch.load(case_path, weights_only=False)
    name, rule = case["model"], case["rule"]
    if case.get("identity_epsilon") is not None:
        # diagnostic: the shift LXT's identity rule adds to the input before dividing
        # (its ``forward(ctx, fn, input, epsilon=1e-10)``, not sign-stabilized)
        from lxt.efficient.rules import identity_rule_implicit_fn
        identity_rule_implicit_fn.forward.__defaults__ = (case["identity_epsilon"],)
    module, patches = patch_map(name, rule)
    from lxt.efficient import monkey_patch
    monkey_patch(module, patches)
    model = tm.build(name, spec=case.get("spec")).to(case["dtype"])
    if name == "bert":  # LXT replaces modeling_bert by its own copy: make sure it did
        assert type(model).__module__ == "lxt.efficient.models.bert", type(model).__module__
    model.load_state_dict(case["state_dict"])
    if name == "vit":
        relevance, logit = pixel_relevance(model, case["inputs"], case["target"], case.get("gamma"))
    else:
        relevance, logit = token_relevance(model, tm.TOKEN_MODELS[name][1], case["inputs"],
                                           case["target"])
    from importlib.metadata import version
    torch.save({"relevance": relevance, "logit": logit,
                "versions": f"lxt {version('lxt')}, transformers {version('transformers')}, "
                            f"zennit {version('zennit')}"}, out_path)


def faithfulness(case_path: str, out_path: str) -> None:
    """LXT's AttnLRP token relevance of a trained BERT classifier on given sequences
    (``lxt_compare.py --faithfulness``)."""
    case = torch.load(case_path, weights_only=False)
    module, patches = patch_map("bert", "attnlrp")
    from lxt.efficient import monkey_patch
    monkey_patch(module, patches)
    import transformers
    config = transformers.BertConfig.from_dict(case["config"])
    model = module.BertForSequenceClassification(config).double().eval()
    assert type(model).__module__ == "lxt.efficient.models.bert", type(model).__module__
    model.load_state_dict(case["state_dict"])
    data = case["data"]
    relevance, _ = token_relevance(model, "cls", data["input_ids"], data["labels"],
                                   attention_mask=data["attention_mask"])
    torch.save({"tokens": relevance.sum(-1)}, out_path)


# ----------------------------------------------------------------------------- speed

def speed_setup(spec: dict) -> Tuple[Callable[[], Tensor], Callable[[], Tensor]]:
    """The plain gradient x input pass and LXT's pass of a speed case (the same model,
    input and target construction as ``transformer_speed.py``); LXT's pass needs the
    patches on, and registers zennit's Gamma for a ``gamma`` recipe."""
    name = spec["model"]
    model, x, target = tm.speed_case(name, spec["batch"], spec["length"])
    if name == "vit":
        def run(recipe: bool) -> Tensor:
            return pixel_relevance(model, x, target, spec.get("gamma") if recipe else None)[0]
    else:
        def run(recipe: bool) -> Tensor:
            return token_relevance(model, tm.TOKEN_MODELS[name][1], x, target)[0]
    return (lambda: run(False)), (lambda: run(True))


def speed(spec: dict) -> dict:
    """Paired timing of LXT against the plain gradient of the same model (patches
    switched off), both as ``x * grad`` at the input."""
    from speed import paired
    plain, recipe = speed_setup(spec)
    reference = plain()
    module, patches = patch_map(spec["model"], spec.get("rule", "attnlrp"))
    switch = Switch(module, patches)
    switch.use(False)
    if not torch.equal(plain(), reference):
        raise RuntimeError("switching LXT's patches off does not restore the plain gradient")
    switch.use(True)
    if torch.equal(recipe(), reference):
        raise RuntimeError("LXT's patches had no effect")

    def base():
        switch.use(False)
        plain()

    def method():
        switch.use(True)
        recipe()
    seconds, ratio = paired(base, method, spec["repeats"])
    base_seconds, _ = paired(base, base, spec["repeats"])
    return {"seconds": seconds, "ratio": ratio, "base_seconds": base_seconds}


def memory(spec: dict, method: str) -> dict:
    """Peak resident-set increase (MiB) of one call of ``method`` (``"gradient"`` or
    ``"lxt"``), the peak reset just before it."""
    plain, recipe = speed_setup(spec)
    if method == "lxt":
        from lxt.efficient import monkey_patch
        monkey_patch(*patch_map(spec["model"], spec.get("rule", "attnlrp")))
    from speed import peak_mb
    return {"peak_mb": peak_mb(recipe if method == "lxt" else plain)}


def main() -> None:
    command = sys.argv[1]
    if command == "explain":
        explain_case(sys.argv[2], sys.argv[3])
    elif command == "faithfulness":
        faithfulness(sys.argv[2], sys.argv[3])
    elif command == "speed":
        print(json.dumps(speed(json.loads(sys.argv[2]))))
    elif command == "memory":
        print(json.dumps(memory(json.loads(sys.argv[2]), sys.argv[3])))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
