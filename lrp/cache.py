"""Reusing values derived from tensors while those tensors are unchanged.

Rules precompute modified parameters (``W + gamma W+``, ...) and canonizers fused
ones each time a composite is attached.  For a model explained batch after batch
that is the same work every call (about 5% of an EpsilonGammaBox pass on ResNet50),
so both keep the result per module, valid while the source tensors are the same
objects with the same storage and in-place version.  The cache lives on the rule or
canonizer object and holds modules weakly: dropping the composite frees it.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Sequence, Tuple, TypeVar

from torch import Tensor, nn

T = TypeVar("T")


class VersionKey:
    """The identity, storage and in-place version of tensors (and plain values).

    Two keys are equal when every tensor is the same object, still on the same
    storage and not modified in place since, and every plain value compares equal.
    The key holds references to its tensors, so their ids cannot be reused.
    """

    __slots__ = ("_items",)

    def __init__(self, *items: Any) -> None:
        self._items: Tuple[Tuple[Any, Any], ...] = tuple(
            (x, (x._version, x.data_ptr(), x.requires_grad)) if isinstance(x, Tensor)
            else (x, None) for x in items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionKey) or len(other._items) != len(self._items):
            return False
        for (a, va), (b, vb) in zip(self._items, other._items):
            if isinstance(a, Tensor) or isinstance(b, Tensor):
                if a is not b or va != vb:
                    return False
            elif not (a is b or a == b):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def module_state(*modules: nn.Module, extra: Sequence[Any] = ()) -> VersionKey:
    """Key of the modules' own parameters and buffers (not their children's) and ``extra``."""
    return VersionKey(*(t for m in modules for t in (*m.parameters(recurse=False),
                                                     *m.buffers(recurse=False))), *extra)


def cached(owner: object, module: nn.Module, key: VersionKey, compute: Callable[[], T],
           store: str = "_lrp_cache") -> T:
    """``compute()``, reused from ``owner``'s cache while ``module``'s ``key`` is equal.

    ``store`` names the cache on ``owner``: one entry per module in each.
    """
    entries = owner.__dict__.get(store)
    if entries is None:
        entries = owner.__dict__[store] = weakref.WeakKeyDictionary()
    entry = entries.get(module)
    if entry is not None and entry[0] == key:
        return entry[1]
    value = compute()
    entries[module] = (key, value)
    return value
