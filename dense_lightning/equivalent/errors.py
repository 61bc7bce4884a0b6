"""Errors and findings: what keeps a model from being exactly equivalent, and where."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Finding", "NotEquivalentError"]


@dataclass(frozen=True)
class Finding:
    """One module that cannot be made exactly equivalent.

    Attributes:
        module: Dotted path of the module in the model ("" for the root).
        module_type: Class name of that module.
        reason: Why, in words a user can act on.
    """

    module: str
    module_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.module or '<root>'} ({self.module_type}): {self.reason}"


class NotEquivalentError(ValueError):
    """Raised by ``to_dense(strict=True)`` when some modules cannot be made equivalent.

    Attributes:
        findings: One :class:`Finding` per offending module.
    """

    def __init__(
        self, findings: Sequence[Finding], output_stride: int, model: str = "model"
    ) -> None:
        self.findings = tuple(findings)
        self.output_stride = output_stride
        lines = "\n".join(f"  - {f}" for f in self.findings)
        super().__init__(
            f"{model} cannot be made exactly equivalent at output_stride {output_stride}; "
            f"{len(self.findings)} module(s) mix spatial positions:\n{lines}\n"
            "Use strict=False to convert approximately (the result is marked approximate), "
            "use a larger output_stride, or replace these modules with local ones."
        )
