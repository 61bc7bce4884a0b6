"""Plan the phase regions that make position-mixing modules exact.

An op that mixes positions (a spatial mean, group norm statistics, attention over positions, a
functional pool or pad, a coordinate map) computes the original on a tensor of lattice step
``S`` when that tensor is split into its ``S*S`` phases. The planner gives each such op the
smallest module around it whose tensors in and out all sit on one lattice step equal to the
op's (for fixed-factor resampling: the op's input step in, its output step out). That module
becomes a required :class:`~dense_lightning.equivalent.phase.PhaseRegion`. Ops for which no
module fits stay findings.
"""

from __future__ import annotations

from dataclasses import dataclass

from dense_lightning.equivalent.errors import Finding
from dense_lightning.equivalent.lattice import LatticeGeometry
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


def _fits(steps: tuple[Step, Step], op: OpRecord, output_stride: int) -> bool:
    """Whether a module of these steps runs ``op`` on whole phases (residual step 1)."""
    s_in, s_out = steps
    op_in, op_out = op.steps(output_stride)
    if op.kind == "create":
        return s_in == s_out == (op_out, op_out)
    if op.kind == "resample" and op_in != op_out:
        # Between two lattices: each output phase reads the input phase of the same view.
        return op_in % op_out == 0 and s_in == (op_in, op_in) and s_out == (op_out, op_out)
    if op.kind in {"local", "index"} and op_out > 1 and op_out != op_in:
        return False  # a strided functional op would need its stride removed: not per phase
    # An op on flattened positions shows no step of its own (1): the module's step is its step.
    square = s_in[0] == s_in[1]
    return s_in == s_out and square and op_in in (1, s_in[0]) and op_out in (1, s_in[0])


def _layers_fit(region: str, steps: tuple[Step, Step], layers: dict[str, LatticeGeometry]) -> bool:
    """Every converted layer inside runs on the region's phases (its steps divide evenly)."""
    s_in, s_out = steps
    for name, geometry in layers.items():
        if not _inside(name, region) or name == region:
            continue
        for step, out, a, b in zip(geometry.in_step, geometry.out_step, s_in, s_out, strict=True):
            base = a if step % a == 0 else (b if step % b == 0 else 0)
            if not base or out % base:
                return False
    return True


def plan_regions(
    trace: ModelTrace,
    output_stride: int,
    ops: list[tuple[OpRecord, str]],
    layers: dict[str, LatticeGeometry],
) -> tuple[list[RegionPlan], list[Finding]]:
    """Regions for the ops that break equivalence, and findings for those no region fixes.

    Args:
        trace: The model's trace.
        output_stride: The dense model's stride.
        ops: Each breaking op with the reason it breaks.
        layers: Geometry of every layer that is converted, by name.

    Returns:
        The regions (outermost first) and the remaining findings.
    """
    chosen: dict[str, tuple[tuple[Step, Step], list[OpRecord], list[str]]] = {}
    findings: list[Finding] = []
    for op, reason in ops:
        region = None
        for name in _ancestors(op.module):
            module = trace.modules.get(name)
            steps = _module_steps(module, output_stride) if module is not None else None
            if steps is None or steps[0] == (1, 1) or not _fits(steps, op, output_stride):
                continue
            if _layers_fit(name, steps, layers):
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
    return _check_nesting(plans, findings)


def _check_nesting(
    plans: list[RegionPlan], findings: list[Finding]
) -> tuple[list[RegionPlan], list[Finding]]:
    """A region inside another must refine its phases; a resampling region holds no other."""
    kept: list[RegionPlan] = []
    for plan in plans:
        outer = [p for p in plans if p is not plan and _inside(plan.module, p.module)]
        bad = [
            p
            for p in outer
            if p.in_step != p.out_step
            or plan.in_step[0] % p.in_step[0]
            or plan.in_step[1] % p.in_step[1]
        ]
        if bad:
            findings.extend(
                Finding(plan.module, "", f"{r}; it sits inside the phase region {bad[0].module}, "
                        "whose lattice does not divide its own") for r in plan.reasons
            )  # fmt: skip
            continue
        kept.append(plan)
    return kept, findings
