"""Composites: which rule each layer of a model receives.

A :class:`Composite` is a list of primitives applied in order; a later primitive
overrides what an earlier one assigned to the same module.  Positions ("first",
"last", ranges, indices) refer to the model's *execution order*: the order in which
leaf modules are first called in a forward pass, not the order they were registered.

Primitives mapping one rule: :class:`LayerMap` (by index or name),
:class:`GlobalMap`, :class:`RangeMap`, :class:`FirstLayerMap`,
:class:`LastLayerMap`.  Primitives mapping layer types to rules:
:class:`GlobalTypeMap`, :class:`RangeTypeMap`, :class:`FirstLayerTypeMap`,
:class:`LastLayerTypeMap`, :class:`FirstNTypeMap`.  Presets: :func:`EpsilonGammaBox`,
:func:`EpsilonPlus`, :func:`EpsilonAlpha2Beta1`, :func:`EpsilonPlusFlat`,
:func:`EpsilonAlpha2Beta1Flat`, :func:`ExcitationBackprop`, :func:`GuidedBackprop`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import (Callable, Dict, Iterator, List, Mapping, Optional, Sequence,
                    Tuple, Type, Union)

import torch
from torch import nn

from . import rules as R
from .attach import bind_rules, check_model
from .canonizers import Canonizer, canonize
from .ops import ACTIVATION_MODULES, OpTable, is_activation_module
from .probe import execution_order
from .scope import Scope, Substitution

#: A module class, a tuple of them, or a predicate ``f(module) -> bool``.
TypeSpec = Union[Type[nn.Module], Tuple[Type[nn.Module], ...], Callable[[nn.Module], bool]]
TypeRules = Union[Mapping[TypeSpec, R.Rule], Sequence[Tuple[TypeSpec, R.Rule]]]

#: Layer groups usable as keys of type maps.
Convolution = (nn.Conv1d, nn.Conv2d, nn.Conv3d,
               nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
Dense = (nn.Linear,)
Linear = Convolution + Dense
AvgPooling = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
              nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
BatchNorm = (nn.modules.batchnorm._BatchNorm,)
#: Element-wise activations other than ReLU; they get the identity rule (Pass).  The
#: predicate :func:`lrp.ops.is_activation_module` also matches Hugging Face's
#: activation classes.
Activation = ACTIVATION_MODULES

Dropout = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@dataclass
class ModelLayers:
    """A model's modules by name and its leaf modules in execution order."""

    modules: Dict[str, nn.Module]
    order: List[str]


def _type_rules(mapping: TypeRules) -> List[Tuple[TypeSpec, R.Rule]]:
    items = list(mapping.items()) if isinstance(mapping, Mapping) else list(mapping)
    for types, rule in items:
        if not isinstance(rule, R.Rule):
            raise TypeError(f"type map values must be rules, got {rule!r}")
        for t in (types if isinstance(types, tuple) else (types,)):
            if not (isinstance(t, type) and issubclass(t, nn.Module)) and (
                    isinstance(t, type) or not callable(t)):
                raise TypeError(f"type map keys must be module classes or predicates, got {t!r}")
    return items


_Compiled = Tuple[Tuple[type, ...], Tuple[Callable[[nn.Module], bool], ...]]


def _flat(types: TypeSpec) -> _Compiled:
    """A type spec (class, predicate or nested tuples of them) as its classes (one
    ``isinstance`` call) and its predicates."""
    if isinstance(types, tuple):
        parts = [_flat(t) for t in types]
        return (tuple(c for p in parts for c in p[0]), tuple(f for p in parts for f in p[1]))
    return ((types,), ()) if isinstance(types, type) else ((), (types,))


def _match(module: nn.Module, compiled: Sequence[Tuple[tuple, tuple, R.Rule]]) -> Optional[R.Rule]:
    """The rule of the first entry of a type map (as :func:`_flat` gives it) that
    ``module`` matches."""
    for classes, predicates, rule in compiled:
        if isinstance(module, classes) or any(f(module) for f in predicates):
            return rule
    return None


def is_dense(module: nn.Module) -> bool:
    """``nn.Linear`` or Hugging Face's GPT-2 ``Conv1D`` (a linear layer with a
    transposed weight; matched by module path, ``transformers`` is not imported)."""
    return isinstance(module, nn.Linear) or (
        type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers"))


class Primitive:
    """A step of a composite: assigns rules to some modules of a model."""

    def assign(self, layers: ModelLayers, mapping: Dict[str, R.Rule]) -> None:
        """Write ``module name -> rule`` entries into ``mapping`` (overriding)."""
        raise NotImplementedError

    @property
    def positional(self) -> bool:
        """Whether the primitive needs the execution order."""
        return True


class _RuleMap(Primitive):
    """Assigns one rule to positions of the execution order the rule supports."""

    def __init__(self, rule: R.Rule):
        if not isinstance(rule, R.Rule):
            raise TypeError(f"expected a rule, got {rule!r}")
        self.rule = rule

    def names(self, layers: ModelLayers) -> List[str]:
        raise NotImplementedError

    def assign(self, layers, mapping):
        for name in self.names(layers):
            mapping[name] = self.rule


class LayerMap(_RuleMap):
    """Map ``rule`` to the layers at ``index``: an execution position (int, negative
    counts from the end), a module name (str), or a list of those."""

    def __init__(self, index: Union[int, str, Sequence[Union[int, str]]], rule: R.Rule):
        super().__init__(rule)
        self.index = [index] if isinstance(index, (int, str)) else list(index)

    def names(self, layers):
        out = []
        for i in self.index:
            if isinstance(i, str):
                if i not in layers.modules:
                    raise ValueError(f"LayerMap: the model has no module named {i!r}")
                out.append(i)
            else:
                if not -len(layers.order) <= i < len(layers.order):
                    raise ValueError(f"LayerMap: index {i} out of range for "
                                     f"{len(layers.order)} executed layers")
                out.append(layers.order[i])
        return out

    @property
    def positional(self):
        return any(isinstance(i, int) for i in self.index)


class GlobalMap(_RuleMap):
    """Map ``rule`` to every module it supports."""

    def names(self, layers):
        return [n for n, m in layers.modules.items()
                if not list(m.children()) and self.rule.supports(m)]

    @property
    def positional(self):
        return False


class RangeMap(_RuleMap):
    """Map ``rule`` to execution positions ``start <= i < stop`` it supports."""

    def __init__(self, start: int, stop: int, rule: R.Rule):
        super().__init__(rule)
        self.start, self.stop = start, stop

    def names(self, layers):
        return [n for n in layers.order[self.start:self.stop]
                if self.rule.supports(layers.modules[n])]


class FirstLayerMap(_RuleMap):
    """Map ``rule`` to the first executed layer it supports."""

    def names(self, layers):
        found = [n for n in layers.order if self.rule.supports(layers.modules[n])]
        return found[:1]


class LastLayerMap(_RuleMap):
    """Map ``rule`` to the last executed layer it supports."""

    def names(self, layers):
        found = [n for n in layers.order if self.rule.supports(layers.modules[n])]
        return found[-1:]


class _TypeMap(Primitive):
    def __init__(self, mapping: TypeRules):
        self.items = _type_rules(mapping)
        self._compiled = [_flat(types) + (rule,) for types, rule in self.items]

    def candidates(self, layers: ModelLayers) -> List[str]:
        raise NotImplementedError

    def assign(self, layers, mapping):
        for name in self.candidates(layers):
            rule = _match(layers.modules[name], self._compiled)
            if rule is not None:
                mapping[name] = rule

    def _matching_order(self, layers):
        return [n for n in layers.order if _match(layers.modules[n], self._compiled) is not None]


class GlobalTypeMap(_TypeMap):
    """Map layer types to rules everywhere in the model (first matching entry wins)."""

    def candidates(self, layers):
        return list(layers.modules)

    @property
    def positional(self):
        return False


class RangeTypeMap(_TypeMap):
    """A type map restricted to execution positions ``start <= i < stop``."""

    def __init__(self, start: int, stop: int, mapping: TypeRules):
        super().__init__(mapping)
        self.start, self.stop = start, stop

    def candidates(self, layers):
        return layers.order[self.start:self.stop]


class FirstNTypeMap(RangeTypeMap):
    """A type map restricted to the first ``n`` executed layers."""

    def __init__(self, n: int, mapping: TypeRules):
        super().__init__(0, n, mapping)


class FirstLayerTypeMap(_TypeMap):
    """A type map applied to the first executed layer whose type is in the map."""

    def candidates(self, layers):
        return self._matching_order(layers)[:1]


class LastLayerTypeMap(_TypeMap):
    """A type map applied to the last executed layer whose type is in the map."""

    def candidates(self, layers):
        return self._matching_order(layers)[-1:]


class OpMap(Primitive):
    """Map kinds of functional operations (or single functions) to op rules.

    Parameters
    ----------
    mapping
        Keys are op kinds -- ``"activation"``, ``"relu"``, ``"softmax"``,
        ``"product"``, ``"matmul"``, ``"normalization"``, ``"statistic"``,
        ``"maxpool"`` (see :data:`lrp.ops.KINDS`) -- or torch functions
        (``torch.sigmoid``); values are op rules (:mod:`lrp.ops`).
    within
        Apply only to operations run in the forward (at any depth) of these modules:
        module classes or qualified names (``None``: everywhere).

    Like module primitives, later op maps override earlier ones.
    """

    def __init__(self, mapping: Mapping, within=None):
        from .ops import KINDS, OpRule
        kinds = set(KINDS.values())
        for key, rule in mapping.items():
            if not isinstance(rule, OpRule):
                raise TypeError(f"op map values must be op rules (lrp.ops), got {rule!r}")
            if isinstance(key, str) and key not in kinds:
                raise ValueError(f"unknown op kind {key!r}; kinds: {', '.join(sorted(kinds))}")
            if not isinstance(key, str) and key not in KINDS:
                raise ValueError(f"{key!r} is not an operation lrp intercepts")
        self.mapping = dict(mapping)
        self.within = tuple(within) if isinstance(within, list) else within

    def assign(self, layers, mapping):
        return None

    @property
    def positional(self):
        return False

    def __repr__(self) -> str:
        where = f", within={self.within!r}" if self.within is not None else ""
        return f"OpMap({self.mapping!r}{where})"


class Composite:
    """Rules for a whole model: primitives applied in order, later ones override.

    Parameters
    ----------
    *primitives
        The primitives, applied in the given order: module rules
        (:class:`GlobalTypeMap`, :class:`LayerMap`, ...) and op rules
        (:class:`OpMap`).
    canonizers
        Canonizers whose substitutions hold inside the scope of each explanation,
        e.g. ``[MergeBatchNorm()]`` (the model itself is never changed).
    attribution
        ``"relevance"`` (default: the explanation is ``x * grad``, the LRP relevance)
        or ``"gradient"`` (the modified gradient itself, e.g. guided backprop).
    name
        Shown by ``repr`` and in printed rule trees.
    """

    def __init__(self, *primitives: Primitive, canonizers: Optional[Sequence[Canonizer]] = None,
                 attribution: str = "relevance", name: Optional[str] = None):
        for p in primitives:
            if not isinstance(p, Primitive):
                raise TypeError(f"expected composite primitives, got {p!r}")
        if attribution not in ("relevance", "gradient"):
            raise ValueError("attribution must be 'relevance' or 'gradient'")
        for c in canonizers or []:
            if not isinstance(c, Canonizer):
                raise TypeError(f"expected canonizers, got {c!r}")
        self.primitives = list(primitives)
        self.canonizers = list(canonizers or [])
        self.attribution = attribution
        self.name = name or type(self).__name__

    def __repr__(self) -> str:
        return f"{self.name}({len(self.primitives)} primitives, canonizers={self.canonizers})"

    @property
    def positional(self) -> bool:
        """Whether any primitive needs the execution order of the model."""
        return any(p.positional for p in self.primitives)

    @property
    def needs_probe(self) -> bool:
        """Whether binding needs a probe forward (execution order or structure)."""
        return self.positional or any(c.needs_graph for c in self.canonizers)

    @property
    def op_maps(self) -> List["OpMap"]:
        """The op primitives, in order."""
        return [p for p in self.primitives if isinstance(p, OpMap)]

    def resolve(self, model: nn.Module, order: Optional[Sequence[str]] = None,
                substitution: Optional[Substitution] = None,
                modules: Optional[Mapping[str, nn.Module]] = None) -> Dict[str, R.Rule]:
        """The rule of every module that receives one, by module name.

        Parameters
        ----------
        model
            The model.
        order
            Leaf modules in execution order (see :func:`lrp.probe.execution_order`);
            needed when the composite has positional primitives.
        substitution
            The canonizers' substitution: its virtual modules can receive rules, the
            modules it makes identities or replaces cannot.
        modules
            ``dict(model.named_modules())`` if the caller has it already.
        """
        if order is None:
            if self.positional:
                raise ValueError(f"{self.name} maps layers by execution position; "
                                 "pass the execution order (or an example input)")
            order = []
        sub = substitution or Substitution()
        modules = dict(modules if modules is not None else model.named_modules())
        order = list(order)
        for name, module in sub.virtual.items():
            modules[name] = module
        replaced = {n for n, m in modules.items() if m in sub.replace or m in sub.identity}
        if sub.virtual:
            expanded = []
            for name in order:
                parts = [v for v in sub.virtual if v.rsplit(".", 1)[0] == name]
                expanded += parts if parts else [name]
            order = expanded
        layers = ModelLayers({n: m for n, m in modules.items() if n not in replaced},
                             [n for n in order if n not in replaced])
        mapping: Dict[str, R.Rule] = {}
        for primitive in self.primitives:
            primitive.assign(layers, mapping)
        for name, rule in mapping.items():
            module = layers.modules[name]
            if not rule.supports(module):
                raise ValueError(f"{self.name}: rule {rule!r} cannot be applied to "
                                 f"{type(module).__name__} {name!r}")
        return mapping

    def bind(self, model: nn.Module, example_input=None,
             model_kwargs: Optional[dict] = None) -> "Attachment":
        """Resolve the composite for ``model``: canonizer substitutions, module rules
        with their prepared parameters and op rules, ready to be made active as a
        :class:`lrp.scope.Scope` (``with attachment.scope: ...``).  The model is
        not changed.

        Parameters
        ----------
        model
            The model to explain (in eval mode).
        example_input
            An input batch (tensor or tuple of tensors); needed when the composite
            has positional primitives or canonizers that read the model's structure.
        model_kwargs
            Keyword arguments the model is called with (e.g. an attention mask).
        """
        attachment = Attachment(self, model)
        attachment.resolve(example_input, model_kwargs=model_kwargs)
        return attachment

    @contextlib.contextmanager
    def attached(self, model: nn.Module, example_input=None) -> Iterator["Attachment"]:
        """Make the rules active for forwards of ``model`` inside the ``with`` block.

        Nothing is attached to the model: the rules are bound to this block's context
        (:mod:`lrp.scope`).  Forwards of ``model`` in this thread -- and in contexts
        copied from it (``contextvars.copy_context().run``, asyncio tasks) -- use the
        rules and canonizers; other threads, and code after the block, see the
        model unchanged.  An ``explain`` nested in the block uses only its own rules.

        Parameters
        ----------
        model
            The model to explain (in eval mode).
        example_input
            An input (tensor or tuple of tensors) used to find the execution order
            and the structure canonizers need.  Without it they are found on the
            first forward inside the block.
        """
        check_model(model)
        attachment = Attachment(self, model)
        if example_input is not None or not self.needs_probe:
            attachment.resolve(example_input)
        else:
            attachment.resolve_on_first_call()
        with attachment.scope:
            yield attachment

    def tree(self, model: nn.Module, example_input=None) -> str:
        """The model's module tree with the rule each module receives, and the op
        rules.  With canonizers, the tree shows what they substitute."""
        attachment = Attachment(self, model)
        attachment.resolve(example_input, allow_registration_order=True)
        return _tree(model, attachment)


def _tree(model: nn.Module, attachment: "Attachment") -> str:
    mapping = attachment.mapping or {}
    sub = attachment.substitution
    fused = {layer: bn for layer, bn in sub.merged}
    identities = {bn: layer for layer, bn in sub.merged}
    lines = [type(model).__name__ + (f"  -> {mapping['']!r}" if "" in mapping else "")]

    def note(full: str) -> str:
        rule = mapping.get(full)
        text = f"  -> {rule!r}" if rule is not None else ""
        if full in fused:
            text += f"  (BatchNorm {fused[full]} fused in)"
        if full in identities:
            text += f"  (fused into {identities[full]})"
        return text

    def walk(module: nn.Module, prefix: str, indent: str) -> None:
        children = list(module.named_children())
        virtual = [(n.rsplit(".", 1)[1], m) for n, m in sub.virtual.items()
                   if n.rsplit(".", 1)[0] == prefix.rstrip(".") and prefix]
        children += virtual
        for i, (name, child) in enumerate(children):
            last = i == len(children) - 1
            full = f"{prefix}{name}"
            desc = type(child).__name__ if list(child.children()) else repr(child)
            lines.append(f"{indent}{'└─ ' if last else '├─ '}{name}: {desc}" + note(full))
            walk(child, full + ".", indent + ("   " if last else "│  "))

    walk(model, "", "")
    ops = attachment.composite.op_maps
    if ops:
        lines.append("operations:")
        for op_map in ops:
            where = f" (within {op_map.within!r})" if op_map.within is not None else ""
            for key, rule in op_map.mapping.items():
                shown = key if isinstance(key, str) else getattr(key, "__name__", repr(key))
                lines.append(f"  {shown} -> {rule!r}{where}")
    return "\n".join(lines)


class Attachment:
    """A composite bound to one model (created by :meth:`Composite.bind` and
    :meth:`Composite.attached`).

    Attributes
    ----------
    mapping
        Module name -> rule (``None`` until resolved).
    order
        The execution order used for positional primitives.
    substitution
        What the canonizers substitute.
    scope
        The :class:`lrp.scope.Scope` to make active (``with attachment.scope:``).
    """

    def __init__(self, composite: Composite, model: nn.Module):
        self.composite = composite
        self.model = model
        self.mapping: Optional[Dict[str, R.Rule]] = None
        self.order: Optional[List[str]] = None
        self.substitution = Substitution()
        self.scope = Scope(model)

    def resolve(self, example_input, allow_registration_order: bool = False,
                model_kwargs: Optional[dict] = None) -> None:
        """Find the structure (if needed), resolve the rules and fill the scope."""
        composite = self.composite
        order = None
        if composite.needs_probe and example_input is None:
            if not allow_registration_order:
                raise ValueError("an example input is needed to find the execution order "
                                 "and the model's structure")
            order = [n for n, m in self.model.named_modules() if not list(m.children())]
            graph_canonizers = [c for c in composite.canonizers if not c.needs_graph]
            self.substitution = canonize(self.model, graph_canonizers)
        else:
            if composite.positional:
                order = execution_order(self.model, example_input, model_kwargs)
            self.substitution = canonize(self.model, composite.canonizers, example_input,
                                         model_kwargs)
        self.order = order
        modules = dict(self.model.named_modules())
        self.mapping = composite.resolve(self.model, order, self.substitution, modules)
        modules = dict(modules)
        modules.update(self.substitution.virtual)
        scope = self.scope
        scope.substitution = self.substitution
        for module in self.substitution.virtual.values():
            scope.add_member(module)
        scope.rules = bind_rules(modules, self.mapping, self.substitution)
        if composite.op_maps:
            names = {m: n for n, m in modules.items()}
            scope.ops = OpTable([(m.mapping, m.within) for m in composite.op_maps], names)

    def resolve_on_first_call(self) -> None:
        """Defer :meth:`resolve` to the model's first forward inside the block."""
        def on_enter(module: nn.Module, args: tuple) -> None:
            if self.mapping is None:
                self.scope.on_enter = None
                self.resolve(args if len(args) != 1 else args[0])
        self.scope.on_enter = on_enter


def default_ops() -> OpMap:
    """The op rules of the LRP presets: the identity rule for element-wise
    activations, gates (a broadcast factor) as constants and the uniform rule for other
    products and matrix products of two activations, the softmax gradient (AttnLRP),
    and normalizations with their statistic held constant (see :mod:`lrp.ops`)."""
    from . import ops
    return OpMap({"activation": ops.Identity(), "product": ops.Gate(), "matmul": ops.Uniform(),
                  "softmax": ops.Gradient(), "normalization": ops.Normalizer(),
                  "statistic": ops.Constant(),
                  "attention": ops.Attention(ops.Gradient(), ops.Uniform())})


def _base(epsilon: float, conv_rule: R.Rule) -> Tuple[GlobalTypeMap, OpMap]:
    from .canonizers import LayerNormAffine, LayerNormalization
    return (GlobalTypeMap([
        (Convolution, conv_rule),
        (is_dense, R.Epsilon(epsilon)),
        (AvgPooling, R.Norm()),
        (BatchNorm, R.Pass()),
        (is_activation_module, R.Pass()),
        (R.NORMALIZATION_LAYERS + (LayerNormalization,), R.LayerNormRule()),
        (LayerNormAffine, R.Epsilon(epsilon)),
    ]), default_ops())


def EpsilonGammaBox(low: Union[float, torch.Tensor] = -3.0, high: Union[float, torch.Tensor] = 3.0,
                    *, epsilon: float = 1e-6, gamma: float = 0.25,
                    canonizers: Optional[Sequence[Canonizer]] = None) -> Composite:
    """Epsilon for dense layers, gamma for convolutions, ZBox(low, high) at the first
    convolution/dense layer (pixel inputs in ``[low, high]``).

    Convolutions get :class:`lrp.rules.GeneralizedGamma`: identical to
    :class:`lrp.rules.Gamma` wherever the output is positive (every convolution
    followed by a ReLU), and stable where negative outputs carry relevance
    (convolutions feeding residual sums, as in ResNets), where the plain gamma
    denominator crosses zero.
    """
    return Composite(*_base(epsilon, R.GeneralizedGamma(gamma)),
                     FirstLayerTypeMap([(Linear, R.ZBox(low, high))]),
                     canonizers=canonizers, name="EpsilonGammaBox")


def EpsilonPlus(*, epsilon: float = 1e-6,
                canonizers: Optional[Sequence[Canonizer]] = None) -> Composite:
    """Epsilon for dense layers, ZPlus for convolutions."""
    return Composite(*_base(epsilon, R.ZPlus()), canonizers=canonizers, name="EpsilonPlus")


def EpsilonAlpha2Beta1(*, epsilon: float = 1e-6,
                       canonizers: Optional[Sequence[Canonizer]] = None) -> Composite:
    """Epsilon for dense layers, AlphaBeta(2, 1) for convolutions."""
    return Composite(*_base(epsilon, R.AlphaBeta(2.0, 1.0)), canonizers=canonizers,
                     name="EpsilonAlpha2Beta1")


def EpsilonPlusFlat(*, epsilon: float = 1e-6,
                    canonizers: Optional[Sequence[Canonizer]] = None) -> Composite:
    """EpsilonPlus with Flat at the first convolution/dense layer."""
    return Composite(*_base(epsilon, R.ZPlus()), FirstLayerTypeMap([(Linear, R.Flat())]),
                     canonizers=canonizers, name="EpsilonPlusFlat")


def EpsilonAlpha2Beta1Flat(*, epsilon: float = 1e-6,
                           canonizers: Optional[Sequence[Canonizer]] = None) -> Composite:
    """EpsilonAlpha2Beta1 with Flat at the first convolution/dense layer."""
    return Composite(*_base(epsilon, R.AlphaBeta(2.0, 1.0)),
                     FirstLayerTypeMap([(Linear, R.Flat())]),
                     canonizers=canonizers, name="EpsilonAlpha2Beta1Flat")


def _transformer(name: str, softmax, product, epsilon: float, gamma: Optional[float],
                 canonizers: Optional[Sequence[Canonizer]]) -> Composite:
    from . import ops
    from .canonizers import LayerNormAffine, LayerNormalization
    if gamma is not None:
        # Transformer layers' outputs are negative as often as positive (they feed residual
        # sums and norms), where plain Gamma's denominator crosses zero.
        linear_rule: R.Rule = R.GeneralizedGamma(gamma, epsilon=max(epsilon, 1e-6))
    else:
        linear_rule = R.Epsilon(epsilon) if epsilon > 0 else R.Gradient()
    types: List[Tuple[TypeSpec, R.Rule]] = [
        (is_activation_module, R.Pass()),
        (R.NORMALIZATION_LAYERS + (LayerNormalization,), R.LayerNormRule()),
        ((is_dense,) + Convolution, linear_rule), (LayerNormAffine, linear_rule),
    ]
    matmul = ops.Uniform()
    return Composite(GlobalTypeMap(types),
                     OpMap({"activation": ops.Identity(), "product": product, "matmul": matmul,
                            "softmax": softmax, "normalization": ops.Normalizer(),
                            "statistic": ops.Constant(),
                            "attention": ops.Attention(softmax, matmul)}),
                     canonizers=canonizers, name=name if gamma is None else f"{name}(gamma={gamma:g})")


def AttnLRP(*, epsilon: float = 0.0, gamma: Optional[float] = None,
            canonizers: Optional[Sequence[Canonizer]] = None) -> Composite:
    """AttnLRP (Achtibat et al., ICML 2024) for transformers, on any model.

    * element-wise activations (GELU, SiLU, Hugging Face's ``NewGELUActivation``, ...,
      modules or functions): the identity rule;
    * products and matrix products of two activations (``q k^T``, ``A v``, the gated
      MLP's ``act(gate) * up``): the uniform rule, each operand gets half;
    * softmax: its own gradient, which is AttnLRP's softmax rule in ratio form;
    * LayerNorm / RMSNorm (modules or written with ``rsqrt``): the statistic is a
      constant;
    * attention kernels (``F.scaled_dot_product_attention``,
      ``nn.MultiheadAttention``): the above, through the fused kernel;
    * linear layers (``nn.Linear``, GPT-2's ``Conv1D``, convolutions such as a ViT's
      patch embedding): LRP-epsilon, or LRP-gamma with ``gamma`` (for ViTs; the
      generalized form :class:`lrp.rules.GeneralizedGamma`, which is also stable for
      negative outputs, as Zennit >= 0.5's Gamma that LXT's ViT recipe uses).

    Parameters
    ----------
    epsilon
        ``0`` (default): linear layers keep their plain gradient
        (:class:`lrp.rules.Gradient`), which in the ratio form of the engine is LRP-0
        (no division, so nothing to stabilize) -- what LXT's efficient
        implementation computes.  ``> 0``: LRP-epsilon on linear
        layers, which absorbs relevance where ``|z|`` is of the order of ``epsilon``
        and costs one ratio per layer output (about a fifth more time on a LLaMA).
    gamma
        Generalized LRP-gamma with this parameter on linear layers instead of epsilon.
    canonizers
        Canonizers (e.g. ``[MergeBatchNorm()]`` for hybrid models).
    """
    from . import ops
    return _transformer("AttnLRP", ops.Gradient(), ops.Uniform(), epsilon, gamma, canonizers)


def CPLRP(*, epsilon: float = 0.0, gamma: Optional[float] = None,
          canonizers: Optional[Sequence[Canonizer]] = None) -> Composite:
    """CP-LRP (Ali et al., ICML 2022, "XAI for Transformers: better explanations
    through conservative propagation"): as :func:`AttnLRP`, but attention weights and
    gates are constants -- no relevance flows through the softmax (so ``q`` and ``k``
    receive none) or through a gate (the activation branch of a gated MLP, a
    squeeze-excitation scale).  On bias-free models it conserves relevance exactly.

    Parameters
    ----------
    epsilon, gamma, canonizers
        As for :func:`AttnLRP`.
    """
    from . import ops
    return _transformer("CPLRP", ops.Constant(), ops.Gate(), epsilon, gamma, canonizers)


def ExcitationBackprop(*, canonizers: Optional[Sequence[Canonizer]] = None) -> Composite:
    """Excitation backprop (Zhang et al. 2016): ZPlus on every convolution and dense
    layer, Norm on average pooling."""
    return Composite(GlobalTypeMap([(Linear, R.ZPlus()), (AvgPooling, R.Norm()),
                                    (BatchNorm, R.Pass())]),
                     canonizers=canonizers, name="ExcitationBackprop")


def GuidedBackprop(*, canonizers: Optional[Sequence[Canonizer]] = None) -> Composite:
    """Guided backpropagation (Springenberg et al. 2015): ReLU modules pass only
    positive gradients.  The explanation is the modified gradient."""
    from . import ops
    return Composite(GlobalTypeMap([(nn.ReLU, R.GuidedBackprop())]), OpMap({"relu": ops.Guided()}),
                     canonizers=canonizers, attribution="gradient", name="GuidedBackprop")


__all__ = [
    "Composite", "Primitive", "LayerMap", "GlobalMap", "RangeMap", "FirstLayerMap",
    "LastLayerMap", "GlobalTypeMap", "RangeTypeMap", "FirstLayerTypeMap",
    "LastLayerTypeMap", "FirstNTypeMap", "EpsilonGammaBox", "EpsilonPlus",
    "EpsilonAlpha2Beta1", "EpsilonPlusFlat", "EpsilonAlpha2Beta1Flat",
    "ExcitationBackprop", "GuidedBackprop", "AttnLRP", "CPLRP", "OpMap", "default_ops",
    "is_dense", "Convolution", "Dense", "Linear",
    "AvgPooling", "BatchNorm", "Activation", "Dropout",
]
