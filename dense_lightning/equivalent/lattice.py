"""Lattice arithmetic for one spatial layer: original geometry in, dense geometry out.

Every tensor of the original network has a reduction ``r`` (input pixels per cell). In the
dense network the same tensor has reduction ``r' = min(r, output_stride)`` and holds the
original cells on a lattice of step ``S = r / r'``. A layer whose input has step ``m`` keeps
its kernel, multiplies its dilation by ``m`` and takes the stride that carries ``r'_in`` to
``r'_out``.

The one rule that makes borders exact everywhere (see DESIGN.md): every dense tensor has the
*canonical* length ``n * S``, where ``n`` is the original tensor's length from the original
layer's own size formula. A dense layer therefore pads (or crops) its trailing side until it
produces exactly ``n_out * S_out`` cells, so that whatever lies past the last lattice point
reads as the original's padding in the next layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = [
    "AxisGeometry",
    "AxisPlan",
    "LatticeGeometry",
    "LatticePlan",
    "original_length",
    "same_padding",
]


def original_length(
    n: int, kernel: int, stride: int, lead: int, trail: int, dilation: int, ceil_mode: bool
) -> int:
    """Output length of a conv/pool along one axis, as PyTorch computes it.

    Args:
        n: Input length.
        kernel: Kernel size.
        stride: Stride.
        lead: Padding before the first element.
        trail: Padding after the last element.
        dilation: Dilation.
        ceil_mode: Pooling ``ceil_mode`` (the last window may hang over the padding).

    Returns:
        The number of output cells.
    """
    # PyTorch's pooling_output_shape_pad_lr, floor division included.
    span = n + lead + trail - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    # The last pooling window must start inside the input or the left padding.
    if ceil_mode and (out - 1) * stride >= n + lead:
        out -= 1
    if out < 1:
        raise ValueError(
            f"input of length {n} is smaller than the kernel extent {dilation * (kernel - 1) + 1}"
        )
    return out


def same_padding(n: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (as timm's ``pad_same``) for an input of length ``n``.

    Returns:
        ``(lead, trail)`` padding; the extra cell of an odd total goes to the trailing side.
    """
    total = max((math.ceil(n / stride) - 1) * stride + (kernel - 1) * dilation + 1 - n, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class AxisPlan:
    """How a dense layer pads one axis of one input to produce the canonical output.

    Attributes:
        lead: Dense padding before the first cell.
        trail: Dense padding after the last cell (negative: crop).
        out_len: Dense output length, ``n_out * out_step``.
        original_lead: The original layer's own padding before the first cell.
        original_trail: The original layer's own padding after the last cell.
        in_len: Dense input length.
    """

    lead: int
    trail: int
    out_len: int
    original_lead: int
    original_trail: int
    in_len: int


@dataclass(frozen=True)
class LatticePlan:
    """The :class:`AxisPlan` of both spatial axes."""

    h: AxisPlan
    w: AxisPlan


@dataclass(frozen=True)
class AxisGeometry:
    """Original and dense geometry of one layer along one spatial axis.

    Attributes:
        kernel: Kernel size.
        stride: Original stride.
        dilation: Original dilation.
        padding: Original symmetric padding, a fixed ``(lead, trail)`` pair (a static-same
            layer), or ``None`` for dynamic TF-"same" padding.
        in_step: Lattice step ``m`` of the dense input.
        out_step: Lattice step ``M`` of the dense output.
        dense_stride: Stride of the dense layer.
    """

    kernel: int
    stride: int
    dilation: int
    padding: int | tuple[int, int] | None
    in_step: int
    out_step: int
    dense_stride: int

    @property
    def dense_dilation(self) -> int:
        """Dilation of the dense layer: the original dilation times the input step.

        A kernel of size 1 has no holes to spread, so its dilation is 1 whatever the step: the
        same numbers, and backends pick their kernels by it (PyTorch's CPU convolution sends a
        single-threaded 1x1 conv with dilation above 1 to oneDNN, one of dilation 1 to its own
        pointwise kernel), so the dense layer runs the kernel a dilated peer runs.
        """
        return 1 if self.kernel == 1 else self.dilation * self.in_step

    def original_padding(self, n: int) -> tuple[int, int]:
        """Original ``(lead, trail)`` padding for an original input of length ``n``."""
        if self.padding is None:
            return same_padding(n, self.kernel, self.stride, self.dilation)
        if isinstance(self.padding, tuple):
            return self.padding
        return self.padding, self.padding

    def plan(self, length: int, ceil_mode: bool) -> AxisPlan:
        """Padding that makes the dense layer produce the canonical output length.

        Args:
            length: Length ``L`` of the dense input (``n_in * in_step``).
            ceil_mode: Whether the original layer is a ``ceil_mode`` pool.

        Returns:
            The :class:`AxisPlan`.
        """
        if length % self.in_step:
            raise ValueError(
                f"dense input length {length} is not a multiple of its lattice step "
                f"{self.in_step}; feed the dense model through its first layer, not mid-way"
            )
        n_in = length // self.in_step
        pad = self.original_padding(n_in)
        n_out = original_length(
            n_in, self.kernel, self.stride, pad[0], pad[1], self.dilation, ceil_mode
        )
        out_len = n_out * self.out_step
        lead = pad[0] * self.in_step
        needed = (out_len - 1) * self.dense_stride + self.dense_dilation * (self.kernel - 1) + 1
        return AxisPlan(lead, needed - lead - length, out_len, pad[0], pad[1], length)


@dataclass(frozen=True)
class LatticeGeometry:
    """Geometry of a 2-D layer: one :class:`AxisGeometry` per spatial axis (H, W)."""

    h: AxisGeometry
    w: AxisGeometry
    ceil_mode: bool = False
    # Plans by input size: a layer sees few sizes, and planning in Python on every call of
    # every layer is measurable on small maps. Not part of the geometry's identity.
    _plans: dict[tuple[int, int], LatticePlan] = field(
        default_factory=dict, init=False, compare=False, hash=False, repr=False
    )

    @property
    def in_step(self) -> tuple[int, int]:
        """Lattice step of the dense input per axis."""
        return self.h.in_step, self.w.in_step

    @property
    def out_step(self) -> tuple[int, int]:
        """Lattice step of the dense output per axis."""
        return self.h.out_step, self.w.out_step

    @property
    def dense_stride(self) -> tuple[int, int]:
        """Stride of the dense layer per axis."""
        return self.h.dense_stride, self.w.dense_stride

    @property
    def dense_dilation(self) -> tuple[int, int]:
        """Dilation of the dense layer per axis."""
        return self.h.dense_dilation, self.w.dense_dilation

    @property
    def is_identity(self) -> bool:
        """True when the dense layer is the original layer (no step before or after)."""
        return self.in_step == (1, 1) and self.out_step == (1, 1)

    def plan(self, x: torch.Tensor) -> LatticePlan:
        """The padding plan of both axes for the dense input ``x`` (cached per input size)."""
        size = (x.shape[-2], x.shape[-1])
        plan = self._plans.get(size) if type(size[0]) is type(size[1]) is int else None
        if plan is None:
            plan = LatticePlan(
                self.h.plan(size[0], self.ceil_mode), self.w.plan(size[1], self.ceil_mode)
            )
            if type(size[0]) is type(size[1]) is int:  # symbolic sizes (torch.compile) are not keys
                self._plans[size] = plan
        return plan

    def pad(self, x: torch.Tensor, value: float) -> tuple[torch.Tensor, LatticePlan]:
        """Pad (or crop) ``x`` so an unpadded dense op yields the canonical output size.

        Args:
            x: Dense input ``[N, C, H, W]``.
            value: Fill value (0 for convolutions and average pools, -inf for max pools).

        Returns:
            The padded tensor and the plan; the average pool counts each window's cells
            from it.
        """
        plan = self.plan(x)
        padded = F.pad(x, (plan.w.lead, plan.w.trail, plan.h.lead, plan.h.trail), value=value)
        return padded, plan
