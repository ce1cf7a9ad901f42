"""Binding rules to modules for one scope, running the model, and checking it first."""
from __future__ import annotations

from functools import partial
from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn

from .cache import VersionKey, cached, module_state
from .probe import execution_order  # noqa: F401  (re-exported: it lived here)
from .rules import Rule, own_parameters
from .scope import Bound, Substitution


def _settings(rule: Rule) -> list:
    return [getattr(rule, f) for f in rule._fields]


def bind_rules(modules: Mapping[str, nn.Module], mapping: Mapping[str, Rule],
               substitution: Optional[Substitution] = None) -> Dict[nn.Module, Bound]:
    """The rule of each named module with its prepared state, ready for a scope.

    Rules prepare from the parameters the module computes with inside the scope
    (substituted ones for canonized layers); the result is reused while those
    parameters are unchanged (see :mod:`lrp.cache`).
    """
    subs = substitution.params if substitution is not None else {}
    bound: Dict[nn.Module, Bound] = {}
    for name, rule in mapping.items():
        module = modules[name]
        if rule.passive:  # nothing to prepare
            bound[module] = Bound(name, rule, None)
            continue
        params = subs.get(module)
        if params is not None:
            key = VersionKey(params["weight"], params["bias"], *_settings(rule))
        else:
            key = module_state(module, extra=_settings(rule))
            params = own_parameters(module)
        with torch.no_grad():
            prepared = cached(rule, module, key, partial(rule.prepare, module, params))
        bound[module] = Bound(name, rule, prepared)
    return bound


def shapes_of(inputs) -> str:
    """The shape(s) of the tensors in ``inputs``, for messages."""
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    shapes = [tuple(a.shape) for a in args if isinstance(a, Tensor)]
    return str(shapes[0] if len(shapes) == 1 else shapes)


class _Input:
    """Marks the keyword argument that receives the explained inputs."""

    def __repr__(self) -> str:
        return "lrp.INPUT"


#: A ``model_kwargs`` value standing for the explained inputs: ``model_kwargs=
#: {"inputs_embeds": INPUT}`` calls ``model(inputs_embeds=inputs)``.
INPUT = _Input()


def run_model(model: nn.Module, inputs, shown=None, kwargs: Optional[dict] = None):
    """``model(inputs, **kwargs)`` (a tuple is unpacked; a keyword whose value is
    :data:`INPUT` receives ``inputs`` instead); a failing forward becomes a ValueError
    naming the input shapes (those of ``shown`` if given: the batch a probe's first
    sample was cut from, which is what the caller passed)."""
    kwargs = kwargs or {}
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    if any(v is INPUT for v in kwargs.values()):
        kwargs = {k: inputs if v is INPUT else v for k, v in kwargs.items()}
        args = ()
    try:
        return model(*args, **kwargs)
    except RuntimeError as err:
        what = shapes_of(inputs if shown is None else shown)
        if shown is not None:
            what += f" (run on its first sample, {shapes_of(inputs)})"
        raise ValueError(f"the model's forward failed on inputs of shape {what}: {err}") from err


def select_output(output, selector=None):
    """The tensor to explain from a model's output.

    ``selector``: ``None`` -- a tensor as it is, the ``logits`` of a dict or of a
    Hugging Face ``ModelOutput``, the first element of a tuple or list; a string -- that
    key or attribute; a callable -- ``selector(output)``.
    """
    if callable(selector):
        return selector(output)
    if isinstance(selector, str):
        if isinstance(output, dict) and selector in output:
            return output[selector]
        if hasattr(output, selector):
            return getattr(output, selector)
        raise ValueError(f"the model's output has no {selector!r} "
                         f"(it is a {type(output).__name__})")
    if selector is not None:
        raise TypeError(f"output must be None, a key or a callable, got {selector!r}")
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) or hasattr(output, "logits"):
        logits = output.get("logits") if isinstance(output, dict) else output.logits
        if logits is not None:
            return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return output


def classifier_output(output) -> Tensor:
    """``output`` if it is a ``(batch, classes)`` tensor, else a clear ValueError."""
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise ValueError("the model must return a (batch, classes) tensor, got "
                         f"{getattr(output, 'shape', type(output))}")
    return output


def _mode_dependent(module: nn.Module) -> bool:
    """Whether ``module`` behaves differently in training mode (BatchNorm with running
    statistics, dropout with p > 0, attention with dropout)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.track_running_stats
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    for attr in ("dropout", "attention_dropout", "dropout_p", "attn_dropout"):
        value = module.__dict__.get(attr)
        if isinstance(value, float) and value > 0:
            return True
    return False


def check_model(model) -> None:
    """Refuse, with one clear line, models LRP cannot explain as they are.

    * Modules in training mode whose behaviour differs from eval mode (BatchNorm
      would update its running statistics, dropout would randomize the
      explanation): call ``model.eval()``.
    * TorchScript, ``torch.export`` and ``torch.compile``\\ d models (rules need the
      eager modules), and calls inside ``torch.inference_mode`` (no autograd).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("lrp cannot explain inside torch.inference_mode(): relevance is "
                           "computed with autograd; call it outside the inference_mode block")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("lrp cannot attach rules to a TorchScript module (it has no Python "
                        "forward to observe); explain the eager nn.Module it was scripted from")
    if type(model).__name__ == "ExportedProgram":
        raise TypeError("lrp cannot explain a torch.export ExportedProgram (its layers are "
                        "no longer modules); explain the eager nn.Module it was exported from")
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
        raise TypeError("lrp cannot explain a torch.compile'd model (compiled code bypasses "
                        "the rules); pass the original module, model._orig_mod")
    training: List[str] = [f"{name or '<model>'!r} ({type(m).__name__})"
                           for name, m in model.named_modules() if m.training and _mode_dependent(m)]
    if training:
        shown = ", ".join(training[:3]) + (", ..." if len(training) > 3 else "")
        raise ValueError(f"the model is in training mode: {shown} would change running "
                         f"statistics or randomize the explanation; call model.eval() first")
