"""A classifier's global head, run per phase: one logit vector per phase of the dense features.

A classifier pools its deepest map globally (an adaptive pool, a mean, a fixed-size adaptive
pool before a flattening MLP) and applies a head to the pooled vector (dropout, linear layers,
a 1x1 ``conv_head`` on the 1x1 map, a norm). On a dense map of lattice step ``S`` the pool
would average ``S*S`` interleaved copies of the original map. Run per phase instead, it is
exact: the pool's input is split into its phases (:func:`~.phase.space_to_batch`), the pool and
everything after it run on ``S*S`` times the batch, and the model's output is folded back to
``[B, ..., S_h, S_w]``, phase ``(i, j)`` last.

Phase ``(i, j)`` is the original classifier applied to the view whose deepest map starts on cell
``(i, j)`` of the dense map: the image shifted by ``(i, j) * output_stride`` pixels, with the
padding the dense network gives that view (its own border cells, pooled like any other cell).
Phase ``(0, 0)`` is the original classifier's output exactly, border included. Where the pool
comes before the last convolution (MobileNetV3's ``conv_head``), that convolution reads the
pooled ``1 x 1`` map, so it runs per phase with the head and keeps its original geometry.

The head is entered at the smallest module around the pooling op that takes one spatial map
and returns only maps of fixed size (``global_pool.pool`` in timm); layers inside it keep their
original geometry, since they run on the original network's views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dense_lightning.equivalent.ops import OpRecord
from dense_lightning.equivalent.phase import _ACTIVE, Step, _map_tensors, space_to_batch
from dense_lightning.equivalent.trace import ModelTrace, Reduction

__all__ = [
    "GlobalHead",
    "GlobalHeadPlan",
    "attach_global_head",
    "plan_global_head",
    "remove_global_head",
]

_COLLAPSING = frozenset({"adaptive", "reduce"})


@dataclass(frozen=True)
class GlobalHeadPlan:
    """Where a classifier's head runs per phase; recorded in ``dense_info.global_head``.

    Attributes:
        module: Qualified name of the module whose input is split into phases (the pool).
        output: Qualified name of the module whose output is the model's output (the
            classifier); it is folded to ``[B, ..., S_h, S_w]`` there.
        step: Lattice step of the pool's input, per axis: the output's trailing size.
        reasons: The ops that pool globally.
    """

    module: str
    output: str
    step: Step
    reasons: tuple[str, ...]


def _finite_step(reduction: Reduction | None, output_stride: int) -> Step | None:
    if reduction is None or float("inf") in reduction:
        return None
    steps = [r / min(r, output_stride) for r in reduction]
    if any(abs(s - round(s)) > 1e-6 for s in steps):
        return None
    return round(steps[0]), round(steps[1])


def _fixed(reduction: Reduction | None) -> bool:
    """True for a tensor whose size does not follow the input's (a vector, a 1x1 map)."""
    return reduction is None or all(r == float("inf") for r in reduction)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _entry(trace: ModelTrace, op: OpRecord, output_stride: int) -> tuple[str, Step] | None:
    """The smallest module around ``op`` taking one spatial map and returning fixed sizes.

    ``None`` when ``op`` does not collapse space, or sits inside a module that returns maps
    (a squeeze-excitation gate: the planner of phase regions handles it).
    """
    if op.kind not in _COLLAPSING or any(r != float("inf") for r in op.out_reduction):
        return None
    for name in _ancestors(op.module) if op.module else []:
        module = trace.modules.get(name)
        if module is None or not module.calls:
            return None
        if not all(_fixed(r) for _, outputs in module.calls for r in outputs):
            return None
        steps = {
            _finite_step(inputs[0], output_stride) if len(inputs) == 1 else None
            for inputs, _ in module.calls
        }
        if len(steps) == 1 and None not in steps:
            return name, next(iter(steps))  # type: ignore[return-value]
    return None


def plan_global_head(
    trace: ModelTrace, output_stride: int, ops: list[tuple[OpRecord, str]]
) -> tuple[GlobalHeadPlan | None, list[tuple[OpRecord, str]]]:
    """The global head of a classifier, and the breaking ops it does not cover.

    Only a model with one output of fixed size (logits, an embedding) that a module returns
    has one: the phases are folded back where that module returns.
    """
    outputs = trace.output_reductions
    if len(outputs) != 1 or not _fixed(outputs[0]) or not trace.output_modules:
        return None, ops
    fold = min(trace.output_modules, key=lambda n: n.count("."))  # the outermost
    entries: dict[str, Step] = {}
    reasons: list[str] = []
    rest: list[tuple[OpRecord, str]] = []
    for op, reason in ops:
        inside = next((n for n in entries if _inside(op.module, n)), None)
        found = (inside, entries[inside]) if inside else _entry(trace, op, output_stride)
        if found is None:
            rest.append((op, reason))
            continue
        entries[found[0]] = found[1]
        if reason not in reasons:
            reasons.append(reason)
    outer = [n for n in entries if not any(n != o and _inside(n, o) for o in entries)]
    if len(outer) != 1:
        return None, ops  # no global pool, or several: one split, one fold
    return GlobalHeadPlan(outer[0], fold, entries[outer[0]], tuple(reasons)), rest


def _inside(name: str, other: str) -> bool:
    return name == other or name.startswith(other + ".")


@dataclass(eq=False)
class GlobalHead:
    """The hooks that run a classifier's head per phase (see the module docstring).

    Attributes:
        plan: Where the head starts and ends, and the step of its input.
        entry: The module whose input is split into phases.
        output: The module whose output is folded back to ``[B, ..., S_h, S_w]``.
    """

    plan: GlobalHeadPlan
    entry: nn.Module
    output: nn.Module
    # The batch size of the split whose fold is pending (a model call cannot nest in itself).
    _pending: int | None = field(default=None, repr=False)

    def attach(self) -> None:
        """Register the hooks; names and ``state_dict`` keys stay."""
        self.entry.register_forward_pre_hook(self._split, with_kwargs=True)
        self.output.register_forward_hook(self._fold, always_call=True)

    def _split(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        if _ACTIVE.stack:
            raise ValueError(f"{self.plan.module}: a global pool inside a phase region")
        x = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        if x is None or x.ndim < 3:
            raise ValueError(f"{self.plan.module}: expected a feature map to pool")
        self._pending = x.shape[0]
        return _map_tensors(args, self._phases), _map_tensors(kwargs, self._phases)

    def _phases(self, t: torch.Tensor) -> torch.Tensor:
        sh, sw = self.plan.step
        if t.shape[-2] % sh or t.shape[-1] % sw:
            raise ValueError(
                f"{self.plan.module}: input of spatial size {tuple(t.shape[-2:])} is not a "
                f"multiple of its lattice step {self.plan.step}; feed the dense model from its "
                "input"
            )
        return space_to_batch(t, self.plan.step)

    def _fold(self, module: nn.Module, args: tuple, output: Any) -> Any:
        batch, self._pending = self._pending, None
        if batch is None:
            return None  # called on its own, not after the pool: nothing to fold
        if output is None:
            return None  # an exception is unwinding (always_call)
        return _fold(output, batch, self.plan.step)


def _fold(value: Any, batch: int, step: Step) -> Any:
    """``[S_h*S_w*B, *rest]`` (phase-major) -> ``[B, *rest, S_h, S_w]``, in a nested output."""
    sh, sw = step
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 or value.shape[0] != sh * sw * batch:
            raise ValueError(
                f"the dense classifier's output {tuple(value.shape)} does not hold {sh * sw} "
                f"phases of a batch of {batch}"
            )
        rest = value.shape[1:]
        value = value.reshape(sh, sw, batch, *rest)
        return value.permute(2, *range(3, 3 + len(rest)), 0, 1)
    if isinstance(value, (tuple, list)):
        return type(value)(_fold(v, batch, step) for v in value)
    if isinstance(value, dict):
        return {k: _fold(v, batch, step) for k, v in value.items()}
    return value


def attach_global_head(model: nn.Module, plan: GlobalHeadPlan) -> None:
    """Make ``model``'s head run per phase as ``plan`` says."""
    GlobalHead(plan, model.get_submodule(plan.module), model.get_submodule(plan.output)).attach()


def remove_global_head(model: nn.Module) -> None:
    """Remove the hooks :func:`attach_global_head` registered anywhere in ``model``."""
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for hook_id, hook in list(hooks.items()):
                if isinstance(getattr(hook, "__self__", None), GlobalHead):
                    del hooks[hook_id]
                    module._forward_hooks_always_called.pop(hook_id, None)
                    module._forward_hooks_with_kwargs.pop(hook_id, None)
                    module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
