"""Phase layout: the one mechanism behind exact per-phase execution and phase-split speed.

A dense tensor of lattice step ``S`` interleaves ``S*S`` phases, each a map the original network
computes (phase 0 on the input itself, the others on shifted views). :func:`space_to_batch`
makes each phase a batch element; :func:`batch_to_space` interleaves them back. A
:class:`PhaseRegion` is a module (or a run of ``nn.Sequential`` children) that runs in phase
layout: its inputs are split on entry, its outputs interleaved on exit, and every equivalent
layer inside uses the geometry of its phases (:func:`phase_geometry`). Two reasons to have one:

- **Exactness** (``required``): a module that mixes positions (squeeze-excitation, group norm,
  attention, a functional pool or pad) computes, on each phase, exactly what the original
  computes on that view. Phase 0 is the original, border included.
- **Speed** (chosen by :func:`~dense_lightning.equivalent.execution.set_execution`): dilated
  kernels become ordinary kernels on phases, as in TensorFlow's atrous space-to-batch.

A required region runs the original module on the original network's views of its input:
output phase ``u`` is the module, unchanged, applied to the input view ``x[u::step]``
(:func:`gather_views`). With equal steps the views are the phases (:func:`space_to_batch`);
across a stride (a strided block holding a functional pool, a blur filter or a selective-kernel
gate) and between two lattices (nearest or bilinear upsampling) they are the input views of
each output phase. Everything inside a required region is the original network, so it is
exact whatever it computes.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from dense_lightning.equivalent.base import EquivalentLayer
from dense_lightning.equivalent.lattice import LatticeGeometry
from dense_lightning.equivalent.statistics import channel_gate, gate_on_dense_map

__all__ = [
    "PhaseRegion",
    "Step",
    "batch_to_space",
    "execute",
    "fastest",
    "gather_views",
    "phase_geometry",
    "space_to_batch",
]

Step = tuple[int, int]
# Phases must beat the dilated path by this factor before "auto" takes them (noise guard).
_MARGIN = 0.95


def space_to_batch(x: torch.Tensor, step: Step) -> torch.Tensor:
    """Split ``[N, ..., H, W]`` into its phases: ``[sh*sw*N, ..., H/sh, W/sw]``, phase-major."""
    (sh, sw), (n, *mid, h, w) = step, x.shape
    if (sh, sw) == (1, 1):
        return x
    k = len(mid)
    x = x.reshape(n, *mid, h // sh, sh, w // sw, sw)
    x = x.permute(k + 2, k + 4, 0, *range(1, k + 1), k + 1, k + 3)
    return x.reshape(sh * sw * n, *mid, h // sh, w // sw)


def batch_to_space(x: torch.Tensor, step: Step) -> torch.Tensor:
    """Interleave phases back: the inverse of :func:`space_to_batch`."""
    (sh, sw), (b, *mid, h, w) = step, x.shape
    if (sh, sw) == (1, 1):
        return x
    k = len(mid)
    x = x.reshape(sh, sw, b // (sh * sw), *mid, h, w)
    x = x.permute(2, *range(3, k + 3), k + 3, 0, k + 4, 1)
    return x.reshape(b // (sh * sw), *mid, h * sh, w * sw)


def gather_views(x: torch.Tensor, step: Step, out_step: Step) -> torch.Tensor:
    """The input view of every output phase of a module, phase-major in the batch.

    ``x`` has lattice step ``step`` per axis; the module's output has ``out_step``, a multiple
    or a divisor of it. Output phase ``u`` (per axis, ``0 <= u < out_step``) is the original
    module applied to the view ``x[u::step]`` that starts on cell ``u``. Each view keeps the
    length of a phase; one that starts past the last phase runs off the end and reads zeros
    there (only its last cells, which no lattice point of phase 0 reads).

    Returns:
        ``[oh*ow*N, ..., H/sh, W/sw]``, ready for :func:`batch_to_space` with ``out_step``
        after the module ran on it.
    """
    (sh, sw), (oh, ow) = step, out_step
    if (sh, sw) == (oh, ow):
        return space_to_batch(x, step)
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (0, max(ow - sw, 0), 0, max(oh - sh, 0)))
    views = [padded[..., a : a + h : sh, b : b + w : sw] for a in range(oh) for b in range(ow)]
    return torch.cat(views, 0)


def original_geometry(geometry: LatticeGeometry) -> LatticeGeometry:
    """The geometry of the original layer: no lattice, the original stride."""
    axes = [
        replace(a, in_step=1, out_step=1, dense_stride=a.stride) for a in (geometry.h, geometry.w)
    ]
    return LatticeGeometry(axes[0], axes[1], geometry.ceil_mode)


@functools.lru_cache(maxsize=4096)
def phase_geometry(geometry: LatticeGeometry, base: Step) -> LatticeGeometry:
    """The geometry of a dense layer seen on ``base``-phase inputs: steps divided by ``base``."""
    if base == (1, 1):
        return geometry
    axes = []
    for axis, b in zip((geometry.h, geometry.w), base, strict=True):
        if axis.in_step % b or axis.out_step % b:
            raise ValueError(f"lattice steps {axis.in_step}->{axis.out_step} not divisible by {b}")
        axes.append(replace(axis, in_step=axis.in_step // b, out_step=axis.out_step // b))
    return LatticeGeometry(axes[0], axes[1], geometry.ceil_mode)


def split_step(geometry: LatticeGeometry) -> Step:
    """Per axis, the step worth splitting: the input step, or 1 for a kernel of size 1."""
    return tuple(a.in_step if a.kernel > 1 else 1 for a in (geometry.h, geometry.w))  # type: ignore[return-value]


def _divide(a: Step, b: Step) -> Step:
    return a[0] // b[0], a[1] // b[1]


class _Active(threading.local):
    """The regions currently entered in this thread, innermost last."""

    def __init__(self) -> None:
        self.stack: list[PhaseRegion] = []


_ACTIVE = _Active()


def _outer_base() -> Step:
    return _ACTIVE.stack[-1].in_step if _ACTIVE.stack else (1, 1)


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every spatial tensor (3 dims or more) in a nested structure."""
    if isinstance(value, torch.Tensor):
        return fn(value) if value.ndim >= 3 else value
    if isinstance(value, tuple):
        return tuple(_map_tensors(v, fn) for v in value)
    if isinstance(value, list):
        return [_map_tensors(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


@dataclass(eq=False)
class PhaseRegion:
    """A module, or a run of ``nn.Sequential`` children, executed in phase layout.

    Attributes:
        name: Qualified name of the module (``seq[a:b]`` for a run of children).
        in_step: Lattice step of the region's inputs (per axis).
        out_step: Lattice step of its outputs: equal to ``in_step``, a divisor of it (the
            region resamples between two lattices) or a multiple of it (the region is strided:
            it runs once per output phase on that phase's input view).
        modules: The module, or the run's children in order; entered at the first, left at
            the last.
        required: True when the region exists for exactness (it always runs in phases);
            False when chosen for speed.
        mode: For chosen regions, ``"phase"`` (always) or ``"auto"`` (timed per input).
        reasons: For required regions, why the module needs phases.
        gate: For a required region around a recognised squeeze-excitation module (one step
            in and out), its gate function: the module then computes its per-phase
            statistics on the dense map (:mod:`~.statistics`) instead of being split.
    """

    name: str
    in_step: Step
    out_step: Step
    modules: list[nn.Module]
    required: bool
    mode: str = "phase"
    reasons: tuple[str, ...] = ()
    choices: dict[tuple, str] = field(default_factory=dict)
    gate: Callable | None = field(default=None, repr=False)
    _entered: list[bool] = field(default_factory=list, repr=False)
    _tuning: bool = field(default=False, repr=False)

    def geometry_for(self, geometry: LatticeGeometry) -> LatticeGeometry:
        """The geometry an equivalent layer inside this region runs with."""
        if self.required:
            return original_geometry(geometry)  # each view is the original network's input
        # A chosen region has one step, planned to divide the step of every layer inside it.
        try:
            return phase_geometry(geometry, self.in_step)
        except ValueError as error:
            raise ValueError(
                f"{self.name}: a layer of lattice step {geometry.in_step} cannot run inside "
                f"a phase region of step {self.in_step}"
            ) from error

    def attach(self) -> None:
        """Register the entry and exit hooks (module names and ``state_dict`` keys stay).

        A chosen region's entry runs before, and its exit after, those of a required region
        on the same module: chosen regions enclose required ones, never the reverse.
        """
        self.modules[0].register_forward_pre_hook(
            self._enter_hook, with_kwargs=True, prepend=not self.required
        )
        self.modules[-1].register_forward_hook(self._leave_hook, always_call=True)
        if self.required and self.in_step == self.out_step and len(self.modules) == 1:
            self.gate = channel_gate(self.modules[0])
        if self.gate is not None:
            # An instance attribute: nn.Module.__call__ finds it before the class's forward;
            # removing the region deletes it (see remove_regions).
            module = self.modules[0]
            module.forward = functools.partial(_gated_forward, self, module)

    def split(self, value: Any) -> Any:
        """Inputs in dense layout (relative to the enclosing region) -> this region's views."""
        outer = _outer_base()
        rel, rel_out = _divide(self.in_step, outer), _divide(self.out_step, outer)
        return _map_tensors(value, lambda t: gather_views(_checked(t, rel, self), rel, rel_out))

    def merge(self, value: Any, outer: Step) -> Any:
        """Outputs in this region's phases -> dense layout relative to ``outer``."""
        rel = _divide(self.out_step, outer)
        return _map_tensors(value, lambda t: batch_to_space(t, rel))

    def _decide(self, args: tuple, kwargs: dict) -> bool:
        """Whether this call runs in phases (always for required regions)."""
        if self.required or self.mode == "phase":
            return True
        x = next((t for t in args if isinstance(t, torch.Tensor)), None)
        if x is None or len(args) != 1 or kwargs:
            return False
        key = (tuple(x.shape), x.dtype, x.device, _outer_base())
        if key not in self.choices:
            self.choices[key] = self._time(x)
        return self.choices[key] == "phase"

    def _time(self, x: torch.Tensor) -> str:
        modes = {m: m.training for c in self.modules for m in c.modules()}
        self._tuning = True
        try:
            with torch.no_grad():
                for module in modes:
                    module.training = False
                return fastest(
                    {
                        "dilated": lambda: self._chain(x, False),
                        "phase": lambda: self._chain(x, True),
                    },
                    x.device,
                )
        finally:
            for module, training in modes.items():
                module.training = training
            self._tuning = False

    def _chain(self, x: torch.Tensor, phase: bool) -> torch.Tensor:
        """Run the modules in order by one path (timing only; this region's hooks stand aside)."""
        outer = _outer_base()
        y = self.split(x) if phase else x
        with self.entered(phase):
            for module in self.modules:
                y = module(y)
        return self.merge(y, outer) if phase else y

    @contextmanager
    def entered(self, phase: bool) -> Iterator[None]:
        """Push this region on the active stack for the duration (when ``phase``)."""
        if phase:
            _ACTIVE.stack.append(self)
        try:
            yield
        finally:
            if phase:
                _ACTIVE.stack.pop()

    def _enter_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        if self._tuning:
            return None
        # Inside a required region everything is the original network already; a channel
        # gate computes its per-phase statistics on the dense map itself (_gated_forward).
        phase = not _original_inside() and self.gate is None and self._decide(args, kwargs)
        self._entered.append(phase)
        if not phase:
            return None
        args, kwargs = self.split(args), self.split(kwargs)
        _ACTIVE.stack.append(self)
        return args, kwargs

    def _leave_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self._tuning or not self._entered:
            return None
        if not self._entered.pop():
            return None
        _ACTIVE.stack.pop()
        if output is None:
            return None  # an exception is unwinding (always_call): nothing to interleave
        return self.merge(output, _outer_base())


def _checked(t: torch.Tensor, rel: Step, region: PhaseRegion) -> torch.Tensor:
    if t.shape[-2] % rel[0] or t.shape[-1] % rel[1]:
        raise ValueError(
            f"{region.name}: input of spatial size {tuple(t.shape[-2:])} is not a multiple of "
            f"its lattice step {rel}; feed the dense model from its input, not mid-way"
        )
    return t


def _gated_forward(region: PhaseRegion, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward of a gated region's module: per-phase statistics on the dense map."""
    original = type(module).forward
    if _original_inside():
        return original(module, x)
    rel = _divide(region.in_step, _outer_base())
    if rel == (1, 1):  # an enclosing chosen region has split it into these phases already
        return original(module, x)
    return gate_on_dense_map(module, region.gate, _checked(x, rel, region), rel)


def _original_inside() -> bool:
    return any(region.required for region in _ACTIVE.stack)


def current_geometry(geometry: LatticeGeometry) -> LatticeGeometry:
    """The geometry a layer of ``geometry`` runs with inside the innermost active region."""
    return _ACTIVE.stack[-1].geometry_for(geometry) if _ACTIVE.stack else geometry


def fastest(
    candidates: dict[str, Callable[[], Any]], device: torch.device, repeats: int = 3
) -> str:
    """Name of the fastest candidate: one warm-up each, then interleaved timed rounds.

    The first candidate is the default: another wins only when its median wall time is below
    ``0.95`` times the default's.
    """
    cuda = device.type == "cuda"
    sync = functools.partial(torch.cuda.synchronize, device) if cuda else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for rnd in range(repeats + 1):
        for name, fn in candidates.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if rnd:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    default = next(iter(candidates))
    best = min(medians, key=medians.__getitem__)
    return best if medians[best] < _MARGIN * medians[default] else default


def execute(
    layer: EquivalentLayer,
    x: torch.Tensor,
    run: Callable[[torch.Tensor, LatticeGeometry], torch.Tensor],
) -> torch.Tensor:
    """Run an equivalent layer on ``x`` (dense, or in the layout of the active region).

    Args:
        layer: The equivalent layer; its geometry, its execution mode and the active region
            decide the path. The output comes back in the layout of ``x``.
        x: Its input.
        run: The layer's computation for a given geometry.
    """
    state = layer.dense_state
    if state.execution == "dilated" and not _ACTIVE.stack:
        return run(x, layer.geometry)  # the common case, without the lookups below
    geometry = current_geometry(layer.geometry)
    step = split_step(geometry)
    if state.execution == "dilated" or step == (1, 1):
        return run(x, geometry)
    phased = phase_geometry(geometry, step)

    def by_phase() -> torch.Tensor:
        return batch_to_space(run(space_to_batch(x, step), phased), step)

    if state.execution == "auto":
        key = (tuple(x.shape), x.dtype, x.device, geometry)
        if key not in state.choices:
            with torch.no_grad():
                state.choices[key] = fastest(
                    {"dilated": lambda: run(x, geometry), "phase": by_phase}, x.device
                )
        if state.choices[key] == "dilated":
            return run(x, geometry)
    return by_phase()


def region_hooks(model: nn.Module) -> Iterator[tuple[nn.Module, dict, int, PhaseRegion]]:
    """Every region hook on ``model``: ``(module, hook dict, hook id, region)``."""
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for hook_id, hook in list(hooks.items()):
                region = getattr(hook, "__self__", None)
                if isinstance(region, PhaseRegion):
                    yield module, hooks, hook_id, region


def remove_regions(model: nn.Module, *, required: bool) -> None:
    """Remove the chosen regions of ``model`` (and the required ones when ``required``)."""
    for module, hooks, hook_id, region in list(region_hooks(model)):
        if required or not region.required:
            if region.gate is not None:
                module.__dict__.pop("forward", None)
            del hooks[hook_id]
            module._forward_hooks_always_called.pop(hook_id, None)
            module._forward_hooks_with_kwargs.pop(hook_id, None)
            module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
