"""Token-level explanations of language models (Hugging Face ``transformers`` or torch).

:func:`explain_tokens` explains one logit of a sequence model -- the next-token logit
of a causal language model at a position, or a class logit of a sequence classifier
-- with any composite (:func:`lrp.composites.AttnLRP`, :func:`lrp.composites.CPLRP`,
or ``None`` for gradient x input).  Relevance is computed at the input embeddings
and summed per token.  The model is used as it is: no modeling code is copied or
patched, and ``transformers`` is not imported by this module (any model with
``get_input_embeddings()`` and an ``inputs_embeds=`` keyword works).
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .attach import INPUT, select_output
from .composites import Composite
from .explain import explain
from .explanation import Explanation

Ids = Union[int, Sequence[int], Tensor, None]


def _positions(position: int, batch: int, length: int, attention_mask: Optional[Tensor],
               device) -> Tensor:
    """The explained position of each sequence.  Negative positions count from each
    sequence's last real token (right padding); left-padded or unpadded batches end
    at the last column."""
    if position >= 0:
        if position >= length:
            raise ValueError(f"position {position} is outside the {length} tokens")
        return torch.full((batch,), position, dtype=torch.long, device=device)
    if -position > length:
        raise ValueError(f"position {position} is outside the {length} tokens")
    if attention_mask is None:
        return torch.full((batch,), length + position, dtype=torch.long, device=device)
    mask = attention_mask.to(device=device).bool()
    right_padded = (~mask[:, -1]).any().item()
    last = mask.long().sum(1) - 1 if right_padded else torch.full(
        (batch,), length - 1, dtype=torch.long, device=device)
    index = last + position + 1
    if (index < 0).any():
        raise ValueError(f"position {position} is before the first token of a sequence")
    return index


def _per_sample(ids: Ids, batch: int, device, name: str) -> Optional[Tensor]:
    if ids is None:
        return None
    t = torch.as_tensor(ids, device=device)
    if t.is_floating_point() or t.dim() > 1:
        raise ValueError(f"{name} must be an int or one id per sequence, got {ids!r}")
    return t.long().expand(batch) if t.dim() == 0 else t.long()


class _Selector:
    """The explained scores from a sequence model's output: ``(batch, classes)`` at the
    positions of a language model, minus the contrast's score if given.  A model asked
    for the logits of its last ``kept`` positions only may return those or all."""

    def __init__(self, positions: Tensor, contrast: Optional[Tensor], length: int, kept: int = 0):
        self.positions = positions
        self.contrast = contrast
        self.length = length
        self.kept = kept

    def __call__(self, out) -> Tensor:
        logits = select_output(out)
        if not isinstance(logits, Tensor):
            raise ValueError(f"cannot find logits in the model's output ({type(out).__name__})")
        if logits.dim() == 3:  # (batch, tokens, vocab): a language model
            positions = self.positions
            if self.kept and logits.shape[1] == self.kept:
                positions = positions - (self.length - self.kept)
            elif logits.shape[1] != self.length:
                raise ValueError(f"the model returned logits for {logits.shape[1]} positions, "
                                 f"expected {self.length} (or {self.kept}, logits_to_keep)")
            rows = torch.arange(logits.shape[0], device=logits.device)
            logits = logits[rows, positions.to(logits.device)]
        if self.contrast is not None:
            logits = logits - logits.gather(1, self.contrast.to(logits.device)[:, None])
        return logits


def _takes(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` has a parameter ``name``."""
    forward = model.forward
    function = getattr(forward, "__func__", forward)
    try:
        return name in _parameters(function)
    except TypeError:  # not hashable: not cached
        return name in _parameters.__wrapped__(function)


@functools.lru_cache(maxsize=256)
def _parameters(function) -> frozenset:
    """The parameter names of ``function`` (cached: reading a signature costs more than
    a small model's forward step)."""
    try:
        return frozenset(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return frozenset()


def explain_tokens(model: nn.Module, input_ids: Tensor, composite: Optional[Composite] = None,
                   target: Ids = None, position: int = -1,
                   attention_mask: Optional[Tensor] = None, contrast: Ids = None, *,
                   audit: str = "warn", model_kwargs: Optional[dict] = None) -> Explanation:
    """Explain a logit of a sequence model token by token.

    Parameters
    ----------
    model
        A Hugging Face model (``...ForCausalLM``, ``...ForSequenceClassification``,
        encoders, any ``PreTrainedModel``) or a torch model with
        ``get_input_embeddings()`` that accepts ``inputs_embeds=`` (and
        ``attention_mask=``), in eval mode.  It is used unchanged.
    input_ids
        Token ids ``(batch, tokens)`` (or ``(tokens,)`` for one sequence).
    composite
        The rules, e.g. :func:`lrp.composites.AttnLRP` or
        :func:`lrp.composites.CPLRP`; ``None``: gradient x input.
    target
        The explained vocabulary id (language models) or class (classifiers): an int
        for all sequences or one per sequence; ``None``: the predicted one.
    position
        For language models, the position whose next-token logits are explained;
        negative values count back from each sequence's last real token (with a
        right-padded ``attention_mask``), so ``-1`` explains the prediction after
        the whole prompt.
    attention_mask
        Passed to the model (``1`` for tokens, ``0`` for padding).
    contrast
        A second id: explain ``logit[target] - logit[contrast]`` (contrastive
        explanation).
    audit
        As for :func:`lrp.explain`.
    model_kwargs
        Further keyword arguments for the model (``use_cache=False`` is passed to
        models that take it, unless given here: an explanation needs no key/value
        cache).  Causal language models that take ``logits_to_keep`` (Hugging Face's
        ``...ForCausalLM``) compute the logits of the explained positions only, from
        the earliest to the end (the others are not explained); ``logits_to_keep=0``
        here computes them all.

    Returns
    -------
    Explanation
        ``relevance`` at the input embeddings ``(batch, tokens, hidden)``, ``tokens``
        its sum per token ``(batch, tokens)``, ``output`` the explained scores
        ``(batch, classes)`` (minus the contrast's score with ``contrast``),
        ``target`` the explained ids.

    Examples
    --------
    >>> e = explain_tokens(model, tokenizer("The capital of France is",
    ...                    return_tensors="pt").input_ids, AttnLRP())
    >>> tokenizer.decode(e.target[0]), e.tokens[0]
    """
    if not isinstance(input_ids, Tensor) or input_ids.is_floating_point():
        raise TypeError("input_ids must be an integer tensor of token ids")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
        if attention_mask is not None and attention_mask.dim() == 1:
            attention_mask = attention_mask.unsqueeze(0)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                         f"input_ids {tuple(input_ids.shape)}")
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(embedding, nn.Module):
        raise TypeError(f"{type(model).__name__} has no get_input_embeddings(); explain its "
                        "embeddings with lrp.explain(model, embeddings, ..., model_kwargs="
                        "{'inputs_embeds': lrp.attach.INPUT})")
    batch, length = input_ids.shape
    with torch.no_grad():
        embeds = embedding(input_ids.to(next(embedding.parameters()).device))
    kwargs = dict(model_kwargs or {})
    kwargs["inputs_embeds"] = INPUT
    if _takes(model, "use_cache"):
        kwargs.setdefault("use_cache", False)  # no key/value cache to build and keep
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(embeds.device)
    positions = _positions(position, batch, length, attention_mask, embeds.device)
    keep = 0
    if _takes(model, "logits_to_keep"):
        needed = length - int(positions.min())  # the earliest explained position to the end
        keep = kwargs.setdefault("logits_to_keep", needed)
        if keep not in (0, needed):
            raise ValueError("explain_tokens keeps the logits of the explained positions "
                             "itself; pass logits_to_keep=0 (all) or leave it out")
    selector = _Selector(positions, _per_sample(contrast, batch, embeds.device, "contrast"),
                         length, keep)
    t = _per_sample(target, batch, embeds.device, "target")
    e = explain(model, embeds, composite, t, audit=audit, model_kwargs=kwargs, output=selector)
    e.tokens = e.relevance.sum(-1)
    if contrast is not None:
        e.method += " (contrastive)"
    return e


__all__ = ["explain_tokens"]
