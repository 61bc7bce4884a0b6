"""Phase execution: dense layers run as ordinary layers on space-to-batch phases, exactly.

A dense tensor of lattice step ``m`` interleaves ``m*m`` phases, each a sub-image of the
original length ``n``. A dense layer whose input has step ``m > 1`` has dense stride 1 and
dilation ``d*m``: it only ever reads cells of the phase it writes. Split into phases
(``[N, C, n*m, n*m] -> [m*m*N, C, n, n]``), the same layer with its steps divided by ``m`` (the
original dilation ``d``, padding ``p``) computes the same numbers, border included: the
canonical length puts zeros exactly where each phase needs its padding. Dilated kernels are
slow in some backends; the phase layout trades them for ordinary ones plus two reshuffles.

Two granularities, both exact:

- per layer: split, run, interleave (``set_execution(model, "phase", blocks=False)``);
- per block: a run of consecutive children of an ``nn.Sequential`` whose spatial layers all
  have input steps divisible by ``b`` is entered once in ``b``-phase layout and left once
  (forward hooks on the run's first and last child: module names and ``state_dict`` keys
  stay). Elementwise ops, per-channel norms (BatchNorm in train mode too: same elements) and
  residual adds inside the run see the same values, only reordered.

``"auto"`` times both paths of every layer and block the first time it sees an input shape,
device and dtype (under ``no_grad``, in eval mode, like ``cudnn.benchmark``), caches the
choice, and takes phases only when they are at least 5% faster.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from dense_lightning.equivalent.lattice import LatticeGeometry

__all__ = [
    "Execution",
    "PhaseBlock",
    "batch_to_space",
    "execute",
    "execution_choices",
    "fastest",
    "phase_blocks",
    "phase_geometry",
    "set_execution",
    "space_to_batch",
]

Execution = Literal["auto", "dilated", "phase"]
Step = tuple[int, int]
# Phases must beat the dilated path by this factor before "auto" takes them (noise guard).
_MARGIN = 0.95


def space_to_batch(x: torch.Tensor, step: Step) -> torch.Tensor:
    """Split ``[N, C, H, W]`` into its phases: ``[sh*sw*N, C, H/sh, W/sw]``, phase-major."""
    (sh, sw), (n, c, h, w) = step, x.shape
    x = x.reshape(n, c, h // sh, sh, w // sw, sw).permute(3, 5, 0, 1, 2, 4)
    return x.reshape(sh * sw * n, c, h // sh, w // sw)


def batch_to_space(x: torch.Tensor, step: Step) -> torch.Tensor:
    """Interleave phases back: the inverse of :func:`space_to_batch`."""
    (sh, sw), (b, c, h, w) = step, x.shape
    x = x.reshape(sh, sw, b // (sh * sw), c, h, w).permute(2, 3, 4, 0, 5, 1)
    return x.reshape(b // (sh * sw), c, h * sh, w * sw)


@functools.lru_cache(maxsize=4096)
def phase_geometry(geometry: LatticeGeometry, base: Step) -> LatticeGeometry:
    """The geometry of a dense layer seen on ``base``-phase inputs: steps divided by ``base``."""
    axes = []
    for axis, b in zip((geometry.h, geometry.w), base, strict=True):
        if axis.in_step % b or axis.out_step % b:
            raise ValueError(f"lattice steps {axis.in_step}->{axis.out_step} not divisible by {b}")
        axes.append(replace(axis, in_step=axis.in_step // b, out_step=axis.out_step // b))
    return LatticeGeometry(axes[0], axes[1], geometry.ceil_mode)


def _split_step(geometry: LatticeGeometry) -> Step:
    """Per axis, the step worth splitting: the input step, or 1 for a kernel of size 1."""
    return tuple(a.in_step if a.kernel > 1 else 1 for a in (geometry.h, geometry.w))  # type: ignore[return-value]


def _key(x: torch.Tensor, base: Step) -> tuple:
    return tuple(x.shape), x.dtype, x.device, base


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
    layer: nn.Module, x: torch.Tensor, run: Callable[[torch.Tensor, LatticeGeometry], torch.Tensor]
) -> torch.Tensor:
    """Run an equivalent layer on ``x`` by the path its execution mode selects.

    Args:
        layer: The equivalent layer; its ``geometry``, ``_execution`` and ``_phase_block``
            decide the path. ``x`` is dense, or in the phase layout of an active block, and
            the output comes back in the layout of ``x``.
        x: Its input.
        run: The layer's dense computation for a given geometry.
    """
    geometry = layer.geometry
    block = layer.__dict__.get("_phase_block")
    base: Step = (1, 1)
    if block is not None and block.active:
        base = block.base
        geometry = phase_geometry(geometry, base)
    mode = layer.__dict__.get("_execution", "dilated")
    step = _split_step(geometry)
    if mode == "dilated" or step == (1, 1):
        return run(x, geometry)
    phased = phase_geometry(geometry, step)

    def by_phase() -> torch.Tensor:
        return batch_to_space(run(space_to_batch(x, step), phased), step)

    if mode == "auto":
        choices = layer.__dict__.setdefault("_phase_choice", {})
        key = _key(x, base)
        if key not in choices:
            with torch.no_grad():
                choices[key] = fastest(
                    {"dilated": lambda: run(x, geometry), "phase": by_phase}, x.device
                )
        if choices[key] == "dilated":
            return run(x, geometry)
    return by_phase()


@dataclass(eq=False)
class PhaseBlock:
    """A run of consecutive children of an ``nn.Sequential`` executed in phase layout.

    Attributes:
        name: Qualified names of the run's children, for display.
        base: Phase step the run is entered with (per axis).
        children: The run's children, in order.
        mode: ``"phase"`` (always) or ``"auto"`` (timed per input shape).
        anchor: ``(owner, key, layer)`` for one equivalent layer of the run; when
            ``owner.key`` no longer holds it (``to_original`` swapped it), the hooks stand aside.
    """

    name: str
    base: Step
    children: list[nn.Module]
    mode: str
    anchor: tuple[nn.Module, str, nn.Module]
    active: bool = False
    tuning: bool = False
    choices: dict[tuple, str] = field(default_factory=dict)

    def valid(self) -> bool:
        """True while the run's anchor layer is still the equivalent layer it was."""
        owner, key, layer = self.anchor
        return owner._modules.get(key) is layer

    def run(self, x: torch.Tensor, phase: bool) -> torch.Tensor:
        """Run the children on ``x`` by one path (used while tuning)."""
        self.active = phase
        y = space_to_batch(x, self.base) if phase else x
        for child in self.children:
            y = child(y)
        return batch_to_space(y, self.base) if phase else y

    def decide(self, x: torch.Tensor) -> str:
        """The path for this input: fixed, or timed once per shape, dtype and device."""
        if self.mode != "auto":
            return self.mode
        key = _key(x, self.base)
        if key not in self.choices:
            modes = {m: m.training for c in self.children for m in c.modules()}
            self.tuning = True
            try:
                with torch.no_grad():
                    for module in modes:
                        module.training = False
                    self.choices[key] = fastest(
                        {"dilated": lambda: self.run(x, False), "phase": lambda: self.run(x, True)},
                        x.device,
                    )
            finally:
                for module, training in modes.items():
                    module.training = training
                self.tuning = self.active = False
        return self.choices[key]

    def enter(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook on the run's first child: split the input into phases."""
        if self.tuning:
            return None
        self.active = False
        if not self.valid() or len(args) != 1:
            return None
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            return None
        if x.shape[-2] % self.base[0] or x.shape[-1] % self.base[1] or self.decide(x) != "phase":
            return None
        self.active = True
        return (space_to_batch(x, self.base),)

    def leave(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook (always called) on the run's last child: interleave the phases back."""
        if self.tuning or not self.active:
            return None
        self.active = False
        if output is None:
            return None  # an exception is unwinding (always_call): nothing to interleave
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"{self.name}: a phase block must end in a module that returns a tensor, got "
                f"{type(output).__name__}; use set_execution(model, mode, blocks=False)"
            )
        return batch_to_space(output, self.base)


# Modules whose result depends on where a value sits among all positions, or on the batch:
# never inside a block (a strictly converted model has none in its body anyway).
_POSITIONAL = (
    nn.GroupNorm, nn.LocalResponseNorm, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.Fold, nn.Unfold, nn.Flatten, nn.MultiheadAttention, nn.modules.instancenorm._InstanceNorm,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.conv._ConvTransposeNd, nn.Conv1d, nn.Conv3d,
)  # fmt: skip
_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _pointwise(module: nn.Module) -> bool:
    ones = [getattr(module, a, 1) for a in ("kernel_size", "stride", "dilation")]
    return all(v in (1, (1, 1)) for v in ones) and getattr(module, "padding", 0) in (0, (0, 0))


def _child_base(child: nn.Module, counts: Counter) -> tuple[Step | None, bool]:
    """The step a child can be entered with, and whether phases would help it.

    Returns:
        ``(base, motivated)``: ``base`` is the gcd of the input steps of its equivalent layers
        (``None`` when it has no spatial layer, ``(1, 1)`` when it cannot run on phases);
        ``motivated`` is true when it holds a dilated layer with a kernel wider than 1.
    """
    from dense_lightning.equivalent.layers import EquivalentLayer  # layers.py imports this module

    base: Step | None = None
    motivated = False
    for module in child.modules():
        foreign_hooks = module._forward_hooks or module._forward_pre_hooks
        if counts[id(module)] > 1 or foreign_hooks or isinstance(module, _POSITIONAL):
            return (1, 1), False
        if isinstance(module, EquivalentLayer):
            step = module.geometry.in_step
            motivated |= _split_step(module.geometry) != (1, 1)
        elif isinstance(module, _SPATIAL) and not _pointwise(module):
            return (1, 1), False
        else:
            continue
        base = step if base is None else (math.gcd(base[0], step[0]), math.gcd(base[1], step[1]))
    return base, motivated


def _runs(bases: list[tuple[Step | None, bool]]) -> list[tuple[int, int, Step]]:
    """Maximal runs ``(first, last, base)`` of children sharing one base > 1."""
    runs: list[list[Any]] = []
    current: list[Any] | None = None
    for i, (base, motivated) in enumerate(bases):
        if base is None:
            if current is not None:
                current[1] = i
            continue
        if base == (1, 1):
            current = None
        elif current is not None and current[2] == base:
            current[1], current[3] = i, current[3] or motivated
        else:
            current = [i, i, base, motivated]
            runs.append(current)
    return [(first, last, base) for first, last, base, motivated in runs if motivated]


def phase_blocks(model: nn.Module, mode: str = "phase") -> list[PhaseBlock]:
    """Plan the blocks of ``model``: maximal same-step runs of ``nn.Sequential`` children.

    Only plain ``nn.Sequential`` containers (whose forward just chains the children) hold
    blocks, so no value inside a run is seen outside it. Children that are shared, hooked, or
    hold an op that mixes positions or batch elements never join a run.
    """
    from dense_lightning.equivalent.layers import EquivalentLayer  # layers.py imports this module

    counts = Counter(id(module) for _, module in model.named_modules(remove_duplicate=False))
    blocks: list[PhaseBlock] = []

    def visit(module: nn.Module, prefix: str) -> None:
        items = [(k, c) for k, c in module._modules.items() if c is not None]
        taken: set[int] = set()
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            for first, last, base in _runs([_child_base(c, counts) for _, c in items]):
                keys = [k for k, _ in items[first : last + 1]]
                name = f"{prefix}[{keys[0]}:{keys[-1]}]" if len(keys) > 1 else f"{prefix}.{keys[0]}"
                children = [c for _, c in items[first : last + 1]]
                anchor = next(
                    (owner, k, sub)
                    for owner in (module, *(m for c in children for m in c.modules()))
                    for k, sub in owner._modules.items()
                    if isinstance(sub, EquivalentLayer) and (owner is not module or k in keys)
                )
                blocks.append(PhaseBlock(name.lstrip("."), base, children, mode, anchor))
                taken.update(range(first, last + 1))
        for i, (key, child) in enumerate(items):
            if i not in taken:
                visit(child, f"{prefix}.{key}")

    visit(model, "")
    return blocks


def _clear(model: nn.Module) -> None:
    """Remove every block hook and execution attribute from ``model``."""
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for hook_id, hook in list(hooks.items()):
                if isinstance(getattr(hook, "__self__", None), PhaseBlock):
                    del hooks[hook_id]
                    module._forward_hooks_always_called.pop(hook_id, None)
        for attr in ("_execution", "_phase_block", "_phase_choice"):
            module.__dict__.pop(attr, None)


def set_execution(model: nn.Module, mode: Execution = "auto", *, blocks: bool = True) -> nn.Module:
    """Choose how the dense layers of ``model`` execute; every path is exact.

    Args:
        model: A dense model (from ``to_dense``) or any module holding equivalent layers.
        mode: ``"dilated"`` (dilated kernels, the default of ``to_dense``), ``"phase"``
            (ordinary kernels on space-to-batch phases) or ``"auto"`` (the faster of the two,
            timed per layer and block on the first input of each shape, device and dtype).
        blocks: Keep runs of ``nn.Sequential`` children in phase layout between layers;
            ``False`` splits and interleaves around every layer.

    Returns:
        ``model``, changed in place. ``state_dict`` keys and tensors are unchanged.
    """
    from dense_lightning.equivalent.layers import EquivalentLayer  # layers.py imports this module

    if mode not in ("auto", "dilated", "phase"):
        raise ValueError(f"mode must be 'auto', 'dilated' or 'phase', got {mode!r}")
    _clear(model)
    if mode == "dilated":
        return model
    for module in model.modules():
        if isinstance(module, EquivalentLayer):
            module._execution = mode  # type: ignore[attr-defined]
    info = getattr(model, "dense_info", None)
    if not blocks or getattr(info, "approximate", False):
        return model  # an approximately converted body may mix positions: per layer only
    for block in phase_blocks(model, mode):
        for child in block.children:
            for module in child.modules():
                if isinstance(module, EquivalentLayer):
                    module._phase_block = block  # type: ignore[attr-defined]
        block.children[0].register_forward_pre_hook(block.enter)
        block.children[-1].register_forward_hook(block.leave, always_call=True)
    return model


def execution_choices(model: nn.Module) -> dict[str, dict[str, int]]:
    """What ``"auto"`` picked so far: per unit kind, how many decisions took each path."""
    blocks = {id(b): b for m in model.modules() if (b := m.__dict__.get("_phase_block"))}
    layers = (m.__dict__.get("_phase_choice", {}) for m in model.modules())
    return {
        "blocks": dict(Counter(c for b in blocks.values() for c in b.choices.values())),
        "layers": dict(Counter(c for choices in layers for c in choices.values())),
    }
