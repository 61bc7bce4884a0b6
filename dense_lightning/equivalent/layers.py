"""eConv and ePool: drop-in dense versions of ``Conv2d``, ``MaxPool2d`` and ``AvgPool2d``.

Each equivalent layer is a subclass of the layer it replaces, shares its parameters and
buffers (same names, same tensors), and remembers the original configuration so that
:meth:`restore` gives the original layer back. Subclasses with their own ``forward`` (timm's
``StdConv2d``, ``ScaledStdConv2d``...) keep it: the dense class is built on top of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dense_lightning.equivalent.base import EquivalentLayer, dense_class_for, pair
from dense_lightning.equivalent.lattice import AxisGeometry, AxisPlan, LatticeGeometry, LatticePlan
from dense_lightning.equivalent.phase import execute

__all__ = ["EAvgPool2d", "EConv2d", "EMaxPool2d", "EquivalentLayer", "dense_class_for"]


class EConv2d(EquivalentLayer, nn.Conv2d):
    """Equivalent convolution: dilated by the input lattice step, stride set for the lattice."""

    _overridden = ("stride", "padding", "dilation", "same_pad", "_reversed_padding_repeated_twice")

    def _apply_dense_config(self) -> None:
        self.stride = self.geometry.dense_stride
        self.dilation = self.geometry.dense_dilation
        self.padding = (0, 0)
        self._reversed_padding_repeated_twice = [0, 0, 0, 0]
        if getattr(self, "same_pad", False):
            self.same_pad = False  # timm StdConv2dSame: our lattice padding replaces it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad to the canonical size, then run the (possibly subclassed) convolution.

        Inside a phase region, or after ``set_execution(model, "phase" | "auto")``, the same
        numbers come from the kernel run on the input's phases (see :mod:`~.phase`).
        """
        return execute(self, x, self._run)

    def _run(self, x: torch.Tensor, g: LatticeGeometry) -> torch.Tensor:
        padding = _symmetric_padding(g, x)
        if padding is None:
            x, _ = g.pad(x, 0.0)
            padding = (0, 0)
        if type(self) is EConv2d:
            return F.conv2d(
                x, self.weight, self.bias, g.dense_stride, padding, g.dense_dilation, self.groups
            )
        # A subclass (StdConv2d...) transforms its weight in its own forward, which reads
        # these attributes: set them for the call, put the dense ones back after.
        kept = self.padding, self.dilation
        self.padding, self.dilation = padding, g.dense_dilation
        try:
            return super().forward(x)
        finally:
            self.padding, self.dilation = kept


def _symmetric_padding(g: LatticeGeometry, x: torch.Tensor) -> tuple[int, int] | None:
    """The conv padding when the canonical plan pads both sides alike (no copy needed)."""
    plan = g.plan(x)
    if plan.h.lead == plan.h.trail >= 0 and plan.w.lead == plan.w.trail >= 0:
        return plan.h.lead, plan.w.lead
    return None


class EMaxPool2d(EquivalentLayer, nn.MaxPool2d):
    """Equivalent max pool: dilated, padded with -inf so padding never wins."""

    _overridden = ("stride", "padding", "dilation", "ceil_mode")

    def _apply_dense_config(self) -> None:
        self.stride = self.geometry.dense_stride
        self.dilation = self.geometry.dense_dilation
        self.padding = 0
        self.ceil_mode = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad to the canonical size with -inf, then max-pool without padding."""
        return execute(self, x, self._run)

    def _run(self, x: torch.Tensor, g: LatticeGeometry) -> torch.Tensor:
        kh, kw = pair(self.kernel_size)
        padding = _symmetric_padding(g, x)
        # max_pool2d pads with -inf itself, but only up to half the kernel.
        if padding is None or padding[0] > kh // 2 or padding[1] > kw // 2:
            x, _ = g.pad(x, float("-inf"))
            padding = (0, 0)
        return F.max_pool2d(x, (kh, kw), g.dense_stride, padding, g.dense_dilation)


class EAvgPool2d(EquivalentLayer, nn.AvgPool2d):
    """Equivalent average pool with dilation (which ``nn.AvgPool2d`` lacks).

    The window sum is a depthwise convolution with a dilated all-ones kernel; the divisor
    counts, per output cell, the cells the original layer counts: input cells only
    (``count_include_pad=False``) or input and padding, but never cells past the padding
    that a ``ceil_mode`` window hangs over.
    """

    _overridden = ("stride", "padding", "ceil_mode")
    _derived = ("_counts_padding", "_constant_cache")

    def _apply_dense_config(self) -> None:
        g = self.geometry
        self.stride = g.dense_stride
        self.padding = 0
        self.ceil_mode = False
        # timm's AvgPool2dSame pads explicitly, so its padding always counts.
        self._counts_padding = bool(self.count_include_pad or g.h.padding is None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum each dilated window, then divide by the original layer's cell count."""
        return execute(self, x, self._run)

    def _run(self, x: torch.Tensor, g: LatticeGeometry) -> torch.Tensor:
        padded, plan = g.pad(x, 0.0)
        ones, divisor = self._constants(x, g, plan, padded.shape[-2:])
        total = F.conv2d(
            padded, ones, stride=g.dense_stride, dilation=g.dense_dilation, groups=x.shape[1]
        )
        if self.divisor_override:
            return total / self.divisor_override
        return total / divisor

    def _constants(
        self, x: torch.Tensor, g: LatticeGeometry, plan: LatticePlan, padded: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The all-ones window kernel and the cell counts, cached per input and layout."""
        key = (g, tuple(x.shape[1:]), x.dtype, x.device)
        cache = self.__dict__.setdefault("_constant_cache", {})
        if key in cache:
            return cache[key]
        kh, kw = pair(self.kernel_size)
        ones = torch.ones(x.shape[1], 1, kh, kw, dtype=x.dtype, device=x.device)
        count_h = self._axis_counts(g.h, plan.h, padded[0], x)
        count_w = self._axis_counts(g.w, plan.w, padded[1], x)
        # A cell off the lattice whose window lies wholly in padding counts nothing (its sum is
        # 0): it must read as zero padding downstream, not as 0 / 0.
        divisor = (count_h[:, None] * count_w[None, :]).clamp_min(1)
        if not torch.compiler.is_compiling():  # a compiled graph holds them as constants
            cache[key] = (ones, divisor)
        return ones, divisor

    def _axis_counts(
        self, axis: AxisGeometry, plan: AxisPlan, padded_len: int, like: torch.Tensor
    ) -> torch.Tensor:
        lead, length = plan.lead, plan.in_len
        if self._counts_padding:
            start = lead - plan.original_lead * axis.in_step
            stop = lead + length + plan.original_trail * axis.in_step
        else:
            start, stop = lead, lead + length
        mask = torch.zeros(1, 1, padded_len, dtype=like.dtype, device=like.device)
        mask[..., max(start, 0) : min(stop, padded_len)] = 1
        kernel = torch.ones(1, 1, axis.kernel, dtype=like.dtype, device=like.device)
        counts = F.conv1d(
            mask, kernel, stride=axis.dense_stride, dilation=axis.dense_dilation
        ).flatten()
        return counts[: plan.out_len]
