"""The equivalence report: what was compared, the errors found, and the verdict."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EquivalenceReport", "OutputCheck"]


@dataclass
class OutputCheck:
    """Errors for one output of the model.

    Attributes:
        index: Position of the output in the flattened model output.
        original_shape: Shape of the original output.
        dense_shape: Shape of the dense output.
        factor: Dense cells per original cell along (H, W).
        max_abs_error: Largest absolute difference on the original lattice.
        max_rel_error: ``max_abs_error`` over the largest original magnitude.
        phases_checked: How many shifted phases were compared (0: none).
        phase_max_abs_error: Largest absolute difference over the checked phases' interiors.
        phase_max_rel_error: The same, relative.
        interior: Size (cells) of the interior compared for the phases.
        phase_note: Why phases were not checked, when they were not.
    """

    index: int
    original_shape: tuple[int, ...]
    dense_shape: tuple[int, ...]
    factor: tuple[int, int]
    max_abs_error: float
    max_rel_error: float
    phases_checked: int = 0
    phase_max_abs_error: float | None = None
    phase_max_rel_error: float | None = None
    interior: tuple[int, int] | None = None
    phase_note: str | None = None


@dataclass
class EquivalenceReport:
    """Result of :func:`~dense_lightning.equivalent.verify_equivalence`.

    Attributes:
        outputs: One :class:`OutputCheck` per model output.
        rtol: Relative tolerance used for the verdict.
        input_shape: Shape of the input used.
        output_stride: Dense output stride, when known.
        original_stride: Original stride, when known.
        approximate: The dense model was converted with ``strict=False`` despite findings.
        first_divergent_module: First module whose output differs, when outputs differ.
    """

    outputs: list[OutputCheck]
    rtol: float
    input_shape: tuple[int, ...]
    output_stride: int | None = None
    original_stride: int | None = None
    approximate: bool = False
    first_divergent_module: str | None = field(default=None)

    @property
    def max_abs_error(self) -> float:
        """Largest absolute error on the lattice over all outputs."""
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    @property
    def max_rel_error(self) -> float:
        """Largest relative error on the lattice over all outputs."""
        return max((o.max_rel_error for o in self.outputs), default=0.0)

    @property
    def max_phase_rel_error(self) -> float | None:
        """Largest relative error over the checked phases, ``None`` if none was checked."""
        errors = [o.phase_max_rel_error for o in self.outputs if o.phase_max_rel_error is not None]
        return max(errors) if errors else None

    @property
    def equivalent(self) -> bool:
        """True when every output agrees within ``rtol`` on the lattice and checked phases."""
        phase = self.max_phase_rel_error
        return self.max_rel_error <= self.rtol and (phase is None or phase <= self.rtol)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, verdict and summary errors included."""
        data = asdict(self)
        data.update(
            equivalent=self.equivalent,
            max_abs_error=self.max_abs_error,
            max_rel_error=self.max_rel_error,
            max_phase_rel_error=self.max_phase_rel_error,
        )
        return data

    def to_json(self, indent: int = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        verdict = "EQUIVALENT" if self.equivalent else "NOT EQUIVALENT"
        head = (
            f"{verdict} (rtol {self.rtol:g}) - output stride {self.output_stride} "
            f"from {self.original_stride}, input {tuple(self.input_shape)}"
        )
        lines = [head]
        for o in self.outputs:
            phase = (
                f"{o.phases_checked} phases, max rel {o.phase_max_rel_error:.2e}"
                if o.phases_checked
                else (o.phase_note or "phases: n/a")
            )
            lines.append(
                f"  output {o.index}: {o.original_shape} -> {o.dense_shape} (x{o.factor[0]}) "
                f"lattice max abs {o.max_abs_error:.2e}, max rel {o.max_rel_error:.2e}; {phase}"
            )
        if self.first_divergent_module:
            lines.append(f"  first divergent module: {self.first_divergent_module}")
        if self.approximate:
            lines.append("  (converted with strict=False: approximate by construction)")
        return "\n".join(lines)
