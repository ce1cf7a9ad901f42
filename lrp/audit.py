"""Coverage audit: find non-linear operations of a forward that no rule covers.

The ratio engine handles every linear operation (and ReLU, max-pooling) through the
ordinary gradient.  Any other non-linear operation (``torch.sigmoid`` called in a
``forward``, softmax, a product of two activations, a division by an activation,
normalisation by a computed statistic) would silently fall back to its gradient.
:class:`Auditor` stamps every autograd node with the innermost module whose forward
created it and, after the forward, walks the graph to report the uncovered nodes.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set

import torch
from torch import Tensor, nn

from .core import RuleCall, graph_nodes
from .scope import walk_tensors

_LINEAR = {
    "Add", "Sub", "Neg", "View", "UnsafeView", "ReshapeAlias", "Reshape", "Permute",
    "Transpose", "T", "Cat", "Stack", "Split", "SplitWithSizes", "Unbind", "Index",
    "Select", "Slice", "Expand", "Squeeze", "Unsqueeze", "Sum", "Mean", "Convolution",
    "AvgPool1D", "AvgPool2D", "AvgPool3D", "AdaptiveAvgPool1D", "AdaptiveAvgPool2D",
    "AdaptiveAvgPool3D", "MaxPool2DWithIndices", "MaxPool3DWithIndices", "MaxPool1D",
    "MaxPool2D", "AdaptiveMaxPool1D", "AdaptiveMaxPool2D", "AdaptiveMaxPool3D", "Relu",
    "Threshold", "LeakyRelu", "Clone", "AccumulateGrad", "NativeBatchNorm",
    "CudnnBatchNorm", "MkldnnBatchNorm", "ConstantPadNd", "ReflectionPad1D",
    "ReflectionPad2D", "ReplicationPad1D", "ReplicationPad2D", "UpsampleNearest1D",
    "UpsampleNearest2D", "UpsampleNearest3D", "UpsampleBilinear2D", "UpsampleLinear1D",
    "ToCopy", "Copy", "CopySlices", "AsStrided", "Roll", "Flip", "Repeat", "Gather",
    "NativeDropout", "Alias", "Diagonal", "Narrow", "Unfold", "Im2Col", "Col2Im",
    "PixelShuffle", "PixelUnshuffle", "Tril", "Triu", "Embedding",
    "Cumsum", "IndexSelect", "MaskedFill", "Where",
}
# Bilinear in their arguments: linear when at most one argument carries activations.
_BILINEAR = {"Mul", "Div", "Mm", "Bmm", "Addmm", "Addmv", "Mv", "Matmul", "Dot",
             "Addcmul", "Addcdiv", "Einsum", "Linear", "BaddBmm", "Addbmm"}
# Nodes created by this library's own rules.
_OWN = {"_RuleGradient", "_RelevanceBridge", "_GuidedGradient", "_ScaleGradient", "_GuidedReLU"}

_SUFFIX = re.compile(r"(Backwards?)?\d*$")


def op_name(node) -> str:
    """``'ConvolutionBackward0' -> 'Convolution'``, ``'torch::autograd::CopyBackwards'
    -> 'Copy'``."""
    return _SUFFIX.sub("", node.name().rsplit("::", 1)[-1])


@dataclass
class Finding:
    """An uncovered operation: its op name and the module whose forward ran it."""

    op: str
    module: str

    def __str__(self) -> str:
        where = self.module if self.module else "<model forward>"
        return f"{self.op} in {where}"


@dataclass
class AuditReport:
    """What a coverage audit found.

    Attributes
    ----------
    uncovered
        Non-linear operations no rule covers.
    never_fired
        Modules that have a rule but were not called in the forward.
    """

    uncovered: List[Finding] = field(default_factory=list)
    never_fired: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.uncovered and not self.never_fired

    def __str__(self) -> str:
        if self.ok:
            return "coverage audit: every non-linear operation is covered by a rule"
        lines = []
        if self.uncovered:
            lines.append("non-linear operations without a rule (they use the plain gradient):")
            lines += [f"  - {f}" for f in self.uncovered]
        if self.never_fired:
            lines.append("modules with a rule that never ran: " + ", ".join(self.never_fired))
        return "\n".join(lines)


class CoverageError(RuntimeError):
    """Raised by a strict audit when an operation is not covered by any rule."""


class Auditor:
    """Stamps autograd nodes with the innermost module whose forward created them.

    :meth:`observe` is a scope observer (:class:`lrp.scope.Scope`): after each module
    call it stamps the nodes between the module's output tensors (also inside tuples,
    lists, dicts and ``ModelOutput`` objects) and its inputs that no inner module stamped.
    Inside a scope only tensors that depend on the input carry a graph (parameters
    are constants), so every node of the output's graph carries the input.
    """

    KEY = "lrp_module"

    def __init__(self, model: nn.Module, virtual: Optional[Dict[str, nn.Module]] = None):
        self.names = {m: n for n, m in model.named_modules()}
        self.names.update({m: n for n, m in (virtual or {}).items()})

    def observe(self, module: nn.Module, args: tuple, output) -> None:
        if not torch.is_grad_enabled():
            return None
        name = self.names.get(module)
        if name is None:
            return None
        boundary = {a.grad_fn for a in args if isinstance(a, Tensor) and a.grad_fn is not None}
        for tensor in walk_tensors(output):
            if tensor.grad_fn is None:
                continue
            for node in graph_nodes(tensor.grad_fn, boundary.__contains__):
                node.metadata.setdefault(self.KEY, name)
        return None

    def _uncovered(self, node) -> bool:
        op = op_name(node)
        if op in _OWN or op in _LINEAR or "AccumulateGrad" in node.name():
            return False
        if op in _BILINEAR:
            carriers = [n for n, _ in node.next_functions if n is not None]
            if op == "Div":
                return len(node.next_functions) > 1 and node.next_functions[1][0] is not None
            return len(carriers) > 1
        return True

    def report(self, output: Tensor, calls: Iterable[RuleCall],
               ruled: Iterable[str] = ()) -> AuditReport:
        """Audit the graph of ``output`` given the ruled calls of its forward."""
        covered: Set[object] = set()
        calls = list(calls)
        for call in calls:
            boundary = set(call.input_nodes)
            covered.update(graph_nodes(call.output_node, boundary.__contains__))
        findings: Dict[tuple, Finding] = {}
        if output.grad_fn is not None:
            for node in graph_nodes(output.grad_fn, lambda n: False):
                if node in covered or not self._uncovered(node):
                    continue
                finding = Finding(op_name(node), node.metadata.get(self.KEY, ""))
                findings.setdefault((finding.op, finding.module), finding)
        fired = {c.name for c in calls}
        never = sorted(set(ruled) - fired)
        return AuditReport(list(findings.values()), never)


def handle_report(report: AuditReport, mode: str) -> None:
    """Warn (``mode='warn'``) or raise :class:`CoverageError` (``'strict'``)."""
    if report.ok or mode == "off":
        return
    if mode == "strict" and report.uncovered:
        raise CoverageError(str(report))
    warnings.warn(str(report), stacklevel=3)
