"""The aten calls of one function: what a dense model runs, compared call for call with a peer.

Two models that make the same aten calls (the same ops on tensors of the same shapes and
strides, with the same other arguments: padding, dilation, ...) do the same work in the same
kernels, so a time ratio between them is the machine's noise, not overhead of either. Calls are
compared as multisets: the order of independent branches (a residual shortcut before or after
the main path) does not change the work.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

__all__ = ["aten_calls", "compare_calls"]

Call = tuple[str, tuple]


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.stride(), str(value.dtype))
    if isinstance(value, torch.device | torch.dtype | torch.layout | torch.memory_format):
        return str(value)
    return value


class _Calls(TorchDispatchMode):
    """Records every aten call made under it with a description of its arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[Call] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        described = tree_map(_describe, (args, sorted(kwargs.items())))
        self.calls[(str(func), repr(described))] += 1
        return func(*args, **kwargs)


def aten_calls(fn: Callable[[], Any]) -> Counter[Call]:
    """The aten calls of one call of ``fn``, counted (its backward pass too, if it runs one)."""
    with _Calls() as recorder:
        fn()
    return recorder.calls


def compare_calls(ours: Counter[Call], peer: Counter[Call]) -> dict[str, Any]:
    """Whether two call records are the same multiset, with their sizes and what differs.

    Returns:
        ``same`` (bool), ``ours`` and ``peer`` (total calls), ``only_ours`` and ``only_peer``
        (calls the other lacks, counted), and ``ops_only_ours`` / ``ops_only_peer``: the op
        names of those calls, counted, which say what the difference is made of.
    """
    extra, missing = ours - peer, peer - ours
    return {
        "same": not extra and not missing,
        "ours": sum(ours.values()),
        "peer": sum(peer.values()),
        "only_ours": sum(extra.values()),
        "only_peer": sum(missing.values()),
        "ops_only_ours": dict(_ops(extra).most_common()),
        "ops_only_peer": dict(_ops(missing).most_common()),
    }


def _ops(calls: Counter[Call]) -> Counter[str]:
    out: Counter[str] = Counter()
    for (op, _), n in calls.items():
        out[op] += n
    return out
