"""``DenseInfo``: what ``to_dense`` did to a model, and the one accessor that reads it."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from dense_lightning.equivalent.errors import Finding
from dense_lightning.equivalent.head import GlobalHeadPlan
from dense_lightning.equivalent.regions import RegionPlan

__all__ = ["DenseInfo", "get_dense_info"]


@dataclass(frozen=True)
class DenseInfo:
    """What :func:`to_dense` did, stored on the converted model as ``model.dense_info``.

    Attributes:
        output_stride: Total stride of the dense model.
        original_stride: Total stride of the original model.
        approximate: True when converted with ``strict=False`` despite findings.
        findings: Modules that keep the model from being exactly equivalent.
        method: The forward method that was traced.
        regions: Modules that run in phase layout to stay exact, and why.
        max_rel_error: Largest relative error on the lattice measured on a probe input
            before returning (float32, or the model's dtype).
        float64_rel_error: The same in float64, measured when the first exceeded the
            tolerance: deep networks amplify rounding, and float64 tells rounding from a
            real difference.
        global_head: Where a classifier's global pool and head run per phase; its outputs
            then end in ``[k, k]`` phases (see :mod:`~dense_lightning.equivalent.head`).
    """

    output_stride: int
    original_stride: int
    approximate: bool
    method: str = "forward"
    findings: tuple[Finding, ...] = field(default=())
    regions: tuple[RegionPlan, ...] = field(default=())
    max_rel_error: float | None = None
    float64_rel_error: float | None = None
    global_head: GlobalHeadPlan | None = None

    @property
    def per_view_statistics(self) -> bool:
        """True when some region reads every position (phases other than 0 see their own)."""
        return any(r.per_view_statistics for r in self.regions)

    @property
    def factor(self) -> int:
        """Cells per original cell along each axis: ``original_stride / output_stride``."""
        return self.original_stride // self.output_stride


def get_dense_info(model: nn.Module) -> DenseInfo | None:
    """What :func:`to_dense` recorded on ``model``, or ``None`` for a model it did not convert.

    The one accessor for a model's dense state: code outside this package reads it here
    rather than poking at the attribute.
    """
    info = model.__dict__.get("dense_info")
    return info if isinstance(info, DenseInfo) else None
