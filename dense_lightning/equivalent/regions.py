"""Plan the phase regions that make position-mixing modules exact.

An op that mixes positions (a spatial mean, group norm statistics, attention over positions, a
functional pool, pad or strided filter, a coordinate map, resampling) computes the original
when the module around it runs on the original network's own views of its input: each phase of
its output is that module, unchanged, applied to the input view of that phase
(:func:`~dense_lightning.equivalent.phase.gather_views`). The planner gives each such op the
smallest module around it whose tensors in all sit on one lattice step and whose tensors out
all sit on one lattice step (equal, finer or coarser). That module becomes a required
:class:`~dense_lightning.equivalent.phase.PhaseRegion`. Ops for which no module fits (a module
fed from two lattices, tokens, the model itself) stay findings.
"""

from __future__ import annotations

from dataclasses import dataclass

from dense_lightning.equivalent.errors import Finding
from dense_lightning.equivalent.ops import GLOBAL_KINDS, OpRecord
from dense_lightning.equivalent.trace import ModelTrace, ModuleTrace, Reduction

__all__ = ["RegionPlan", "plan_regions"]

Step = tuple[int, int]


@dataclass(frozen=True)
class RegionPlan:
    """A module that runs in phase layout for exactness; recorded in ``dense_info.regions``.

    Attributes:
        module: Qualified name of the module.
        in_step: Lattice step of its inputs.
        out_step: Lattice step of its outputs.
        reasons: What inside it mixes positions.
        per_view_statistics: True when something inside reads every position (a mean, a norm,
            attention): each phase then has its own statistics, so the phases other than 0 are
            the original network on each phase's own sub-image, not on shifted inputs.
    """

    module: str
    in_step: Step
    out_step: Step
    reasons: tuple[str, ...]
    per_view_statistics: bool


def _step(reduction: Reduction | None, output_stride: int) -> Step | None:
    if reduction is None or float("inf") in reduction:
        return None
    steps = [r / min(r, output_stride) for r in reduction]
    if any(abs(s - round(s)) > 1e-6 for s in steps):
        return None
    return round(steps[0]), round(steps[1])


def _module_steps(trace: ModuleTrace, output_stride: int) -> tuple[Step, Step] | None:
    """The one input step and one output step of every call of a module, if there are such."""
    found: set[tuple[Step | None, ...]] = set()
    for inputs, outputs in trace.calls:
        if not inputs or not outputs:
            return None
        ins = {_step(r, output_stride) for r in inputs}
        outs = {_step(r, output_stride) for r in outputs}
        if len(ins) != 1 or len(outs) != 1 or None in ins or None in outs:
            return None
        found.add((*ins, *outs))
    if len(found) != 1:
        return None
    s_in, s_out = next(iter(found))
    return s_in, s_out  # type: ignore[return-value]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _inside(name: str, region: str) -> bool:
    return region == "" or name == region or name.startswith(region + ".")


def _views_fit(steps: tuple[Step, Step]) -> bool:
    """Whether per axis one step divides the other, so every output phase has one input view."""
    return all(i % o == 0 or o % i == 0 for i, o in zip(*steps, strict=True))


def plan_regions(
    trace: ModelTrace,
    output_stride: int,
    ops: list[tuple[OpRecord, str]],
) -> tuple[list[RegionPlan], list[Finding]]:
    """Regions for the ops that break equivalence, and findings for those no region fixes.

    Args:
        trace: The model's trace.
        output_stride: The dense model's stride.
        ops: Each breaking op with the reason it breaks.

    Returns:
        The regions (outermost first) and the remaining findings.
    """
    chosen: dict[str, tuple[tuple[Step, Step], list[OpRecord], list[str]]] = {}
    findings: list[Finding] = []
    for op, reason in ops:
        region = None
        # The model itself never qualifies: as a region it would be plain shift-and-stitch.
        for name in _ancestors(op.module)[:-1]:
            module = trace.modules.get(name)
            steps = _module_steps(module, output_stride) if module is not None else None
            if steps is not None and _views_fit(steps):
                region = (name, steps)
                break
        if region is None:
            findings.append(Finding(op.module, op.module_type, reason))
            continue
        name, steps = region
        entry = chosen.setdefault(name, (steps, [], []))
        entry[1].append(op)
        if reason not in entry[2]:
            entry[2].append(reason)
    plans = [
        RegionPlan(name, s_in, s_out, tuple(reasons), any(o.kind in GLOBAL_KINDS for o in ops_))
        for name, ((s_in, s_out), ops_, reasons) in sorted(chosen.items(), key=lambda kv: kv[0])
    ]
    return _absorb_nested(plans), findings


def _absorb_nested(plans: list[RegionPlan]) -> list[RegionPlan]:
    """A region inside another is absorbed by it: the outer one runs the original inside."""
    kept: list[RegionPlan] = []
    for plan in plans:  # outermost first: names sort before the names inside them
        outer = next((p for p in kept if _inside(plan.module, p.module)), None)
        if outer is None:
            kept.append(plan)
            continue
        merged = RegionPlan(
            outer.module, outer.in_step, outer.out_step,
            tuple(dict.fromkeys(outer.reasons + plan.reasons)),
            outer.per_view_statistics or plan.per_view_statistics,
        )  # fmt: skip
        kept[kept.index(outer)] = merged
    return kept
