"""``set_execution``: choose, for speed, where a dense model runs in phase layout.

Every path is exact; they differ only in speed. Dilated kernels are slow in some backends, and
the phase layout (:mod:`~dense_lightning.equivalent.phase`) trades them for ordinary kernels plus
two reshuffles. Two granularities:

- per layer: split, run, interleave (``set_execution(model, "phase", blocks=False)``);
- per block: a run of consecutive children of an ``nn.Sequential`` whose equivalent layers all
  have input steps divisible by ``b`` becomes a (chosen) :class:`~.phase.PhaseRegion` of step
  ``b``, entered once and left once. Elementwise ops, per-channel norms (BatchNorm in train
  mode too: same elements) and residual adds inside the run see the same values, reordered.

``"auto"`` times both paths of every layer and block the first time it sees an input shape,
device and dtype (under ``no_grad``, in eval mode, like ``cudnn.benchmark``), caches the
choice, and takes phases only when they are at least 5% faster. Regions that ``to_dense``
planned for exactness are never touched here.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import get_args

from torch import nn

from dense_lightning.equivalent.base import EquivalentLayer, Execution
from dense_lightning.equivalent.convert import get_dense_info
from dense_lightning.equivalent.phase import (
    PhaseRegion,
    Step,
    region_hooks,
    remove_regions,
    split_step,
)

__all__ = ["chosen_regions", "execution_choices", "set_execution"]

# Modules whose result depends on where a value sits among all positions, or on the batch:
# never inside a chosen region unless a required region already runs them per phase.
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


def _gcd(a: Step | None, b: Step) -> Step:
    return b if a is None else (math.gcd(a[0], b[0]), math.gcd(a[1], b[1]))


def _required(child: nn.Module) -> tuple[dict[int, PhaseRegion], bool]:
    """Required regions inside ``child`` by module id, and whether a hook is foreign."""
    regions: dict[int, PhaseRegion] = {}
    for module, _, _, region in region_hooks(child):
        regions[id(module)] = region
    foreign = any(
        not isinstance(getattr(hook, "__self__", None), PhaseRegion)
        for module in child.modules()
        for hook in (*module._forward_pre_hooks.values(), *module._forward_hooks.values())
    )
    return regions, foreign


def _child_base(child: nn.Module, counts: Counter) -> tuple[Step | None, bool]:
    """The step a child can be entered with, and whether phases would help it.

    Returns:
        ``(base, motivated)``: ``base`` is the gcd of the input steps of its equivalent layers
        and required regions (``None`` when it has none, ``(1, 1)`` when it cannot run on
        phases); ``motivated`` is true when it holds a dilated layer with a kernel wider than 1.
    """
    regions, foreign = _required(child)
    if foreign:
        return (1, 1), False
    inside = {id(m) for r in regions.values() for mod in r.modules for m in mod.modules()}
    base: Step | None = None
    motivated = False
    for region in regions.values():
        if region.in_step != region.out_step:
            return (1, 1), False
        base = _gcd(base, region.in_step)
    for module in child.modules():
        if counts[id(module)] > 1:
            return (1, 1), False
        if isinstance(module, EquivalentLayer):
            base = _gcd(base, module.geometry.in_step)
            motivated |= split_step(module.geometry) != (1, 1)
        elif id(module) in inside:
            continue
        elif isinstance(module, _POSITIONAL) or (
            isinstance(module, _SPATIAL) and not _pointwise(module)
        ):
            return (1, 1), False
    return base, motivated


def _runs(bases: list[tuple[Step | None, bool]]) -> list[tuple[int, int, Step]]:
    """Maximal runs ``(first, last, base)`` of children sharing one base > 1."""
    runs: list[tuple[int, int, Step, bool]] = []
    for i, (base, motivated) in enumerate(bases):
        if base is None:
            if runs and runs[-1][1] == i - 1:
                first, _, b, m = runs[-1]
                runs[-1] = (first, i, b, m)
            continue
        if base == (1, 1):
            continue
        if runs and runs[-1][1] == i - 1 and runs[-1][2] == base:
            first, _, b, m = runs[-1]
            runs[-1] = (first, i, b, m or motivated)
        else:
            runs.append((i, i, base, motivated))
    return [(first, last, base) for first, last, base, motivated in runs if motivated]


def chosen_regions(model: nn.Module, mode: str = "phase") -> list[PhaseRegion]:
    """Plan the speed regions of ``model``: maximal same-step runs of ``nn.Sequential`` children.

    Only plain ``nn.Sequential`` containers (whose forward just chains the children) hold
    them, so no value inside a run is seen outside it. Children that are shared, hooked, or
    hold an op that mixes positions or batch elements (outside a required region) never join.
    """
    counts = Counter(id(module) for _, module in model.named_modules(remove_duplicate=False))
    regions: list[PhaseRegion] = []

    def visit(module: nn.Module, prefix: str) -> None:
        items = [(k, c) for k, c in module._modules.items() if c is not None]
        taken: set[int] = set()
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            for first, last, base in _runs([_child_base(c, counts) for _, c in items]):
                keys = [k for k, _ in items[first : last + 1]]
                name = f"{prefix}[{keys[0]}:{keys[-1]}]" if len(keys) > 1 else f"{prefix}.{keys[0]}"
                children = [c for _, c in items[first : last + 1]]
                regions.append(PhaseRegion(name.lstrip("."), base, base, children, False, mode))
                taken.update(range(first, last + 1))
        for i, (key, child) in enumerate(items):
            if i not in taken:
                visit(child, f"{prefix}.{key}")

    visit(model, "")
    return regions


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
        ``model``, changed in place. ``state_dict`` keys and tensors are unchanged, and the
        regions that ``to_dense`` planned for exactness stay.
    """
    if mode not in get_args(Execution):
        raise ValueError(f"mode must be one of {get_args(Execution)}, got {mode!r}")
    remove_regions(model, required=False)
    for module in model.modules():
        if isinstance(module, EquivalentLayer):
            module.dense_state.execution = mode
            module.dense_state.choices.clear()
    info = get_dense_info(model)
    if mode == "dilated" or not blocks or (info is not None and info.approximate):
        return model  # an approximately converted body may mix positions: per layer only
    for region in chosen_regions(model, mode):
        region.attach()
    return model


def execution_choices(model: nn.Module) -> dict[str, dict[str, int]]:
    """What ``"auto"`` picked so far: per unit kind, how many decisions took each path."""
    regions = {id(r): r for _, _, _, r in region_hooks(model) if not r.required}
    layers = (m.dense_state.choices for m in model.modules() if isinstance(m, EquivalentLayer))
    return {
        "blocks": dict(Counter(c for r in regions.values() for c in r.choices.values())),
        "layers": dict(Counter(c for choices in layers for c in choices.values())),
    }
