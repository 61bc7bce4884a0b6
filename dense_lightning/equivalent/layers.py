"""eConv and ePool: drop-in dense versions of ``Conv2d``, ``MaxPool2d`` and ``AvgPool2d``.

Each equivalent layer is a subclass of the layer it replaces, shares its parameters and
buffers (same names, same tensors), and remembers the original configuration so that
:meth:`restore` gives the original layer back. Subclasses with their own ``forward`` (timm's
``StdConv2d``, ``ScaledStdConv2d``...) keep it: the dense class is built on top of them.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dense_lightning.equivalent.lattice import LatticeGeometry
from dense_lightning.equivalent.phase import execute

__all__ = ["EAvgPool2d", "EConv2d", "EMaxPool2d", "EquivalentLayer", "dense_class_for"]

# Attributes a dense layer adds to the original module's __dict__; removed on restore.
# The last three are execution settings (dense_lightning.equivalent.phase.set_execution).
_DENSE_ATTRS = (
    "geometry", "original_class", "original_config", "_execution", "_phase_block", "_phase_choice",
)  # fmt: skip


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class EquivalentLayer:
    """Mixin shared by the dense layers: conversion from, and back to, the original."""

    geometry: LatticeGeometry
    original_class: type[nn.Module]
    original_config: dict[str, Any]
    # Attributes of the original module that the dense module overrides.
    _overridden: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_module(cls, module: nn.Module, geometry: LatticeGeometry) -> nn.Module:
        """Build the dense layer that shares ``module``'s parameters and buffers.

        Args:
            module: The original layer (left untouched).
            geometry: Its lattice geometry, from tracing the model.

        Returns:
            A new module of a dense class; ``state_dict`` keys and tensors are the same.
        """
        new_cls = dense_class_for(cls, type(module))
        dense = new_cls.__new__(new_cls)
        dense.__dict__ = _shallow_state(module)
        dense.original_class = type(module)
        dense.original_config = {
            k: getattr(module, k) for k in cls._overridden if hasattr(module, k)
        }
        dense.geometry = geometry
        dense._apply_dense_config()
        return dense

    def _apply_dense_config(self) -> None:
        raise NotImplementedError

    def restore(self) -> nn.Module:
        """Return the original layer, sharing this layer's parameters and buffers."""
        original = self.original_class.__new__(self.original_class)
        state = _shallow_state(self)  # type: ignore[arg-type]
        for key in _DENSE_ATTRS:
            state.pop(key, None)
        state.update(self.original_config)
        original.__dict__ = state
        return original

    def extra_repr(self) -> str:  # noqa: D102 - shown in print(model)
        g = self.geometry
        return (
            f"{super().extra_repr()}, dense_stride={g.dense_stride}, "  # type: ignore[misc]
            f"dense_dilation={g.dense_dilation}, lattice_in={g.in_step}, lattice_out={g.out_step}"
        )


def _shallow_state(module: nn.Module) -> dict[str, Any]:
    """Copy of ``module.__dict__`` whose registries are new dicts holding the same tensors."""
    state = dict(module.__dict__)
    for key, value in state.items():
        if isinstance(value, dict):
            state[key] = copy.copy(value)
    return state


_DYNAMIC: dict[tuple[type, type], type] = {}


# timm layers whose forward only adds dynamic TF-"same" padding to the torch op: the lattice
# padding replaces it, so their forward is bypassed (their weights need no transform).
_PAD_ONLY = {"Conv2dSame", "MaxPool2dSame", "AvgPool2dSame"}


def dense_class_for(base: type, original: type) -> type:
    """The dense class for an original layer class.

    Plain torch layers and timm's padding-only "same" layers map to ``base``; other subclasses
    with their own ``forward`` (weight standardisation...) get a dense class derived from
    them, so their forward is kept.
    """
    torch_layer = base.__mro__[2]  # EConv2d -> EquivalentLayer -> nn.Conv2d
    if original is torch_layer or original.__name__ in _PAD_ONLY:
        return base
    if (base, original) not in _DYNAMIC:
        name = f"{base.__name__}_{original.__name__}"
        cls = type(name, (base, original), {"__module__": __name__})
        # Registered under its name so pickling and deepcopy find it.
        setattr(sys.modules[__name__], name, cls)
        _DYNAMIC[(base, original)] = cls
    return _DYNAMIC[(base, original)]


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

        After ``set_execution(model, "phase" | "auto")`` the same numbers may come from the
        undilated kernel run on the input's phases (see :mod:`~.phase`).
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
    lead_h, trail_h, _, _ = g.h.plan(x.shape[-2], g.ceil_mode)
    lead_w, trail_w, _, _ = g.w.plan(x.shape[-1], g.ceil_mode)
    if lead_h == trail_h >= 0 and lead_w == trail_w >= 0:
        return lead_h, lead_w
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
        kh, kw = _pair(self.kernel_size)
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

    def _apply_dense_config(self) -> None:
        g = self.geometry
        self.stride = g.dense_stride
        self.padding = 0
        self.ceil_mode = False
        # timm's AvgPool2dSame pads explicitly, so its padding always counts.
        self._counts_padding = bool(self.count_include_pad or g.h.padding is None)

    def restore(self) -> nn.Module:  # noqa: D102 - see EquivalentLayer.restore
        original = super().restore()
        original.__dict__.pop("_counts_padding", None)
        return original

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum each dilated window, then divide by the original layer's cell count."""
        return execute(self, x, self._run)

    def _run(self, x: torch.Tensor, g: LatticeGeometry) -> torch.Tensor:
        padded, info = g.pad(x, 0.0)
        kh, kw = _pair(self.kernel_size)
        channels = x.shape[1]
        ones = torch.ones(channels, 1, kh, kw, dtype=x.dtype, device=x.device)
        total = F.conv2d(
            padded, ones, stride=g.dense_stride, dilation=g.dense_dilation, groups=channels
        )
        if self.divisor_override:
            return total / self.divisor_override
        count_h = self._axis_counts(g.h, info["h"], padded.shape[-2], x)
        count_w = self._axis_counts(g.w, info["w"], padded.shape[-1], x)
        # A cell off the lattice whose window lies wholly in padding counts nothing (its sum is
        # 0): it must read as zero padding downstream, not as 0 / 0.
        return total / (count_h[:, None] * count_w[None, :]).clamp_min(1)

    def _axis_counts(
        self, axis: Any, info: tuple, padded_len: int, like: torch.Tensor
    ) -> torch.Tensor:
        (lead, _), (orig_lead, orig_trail), out_len, length = info
        if self._counts_padding:
            start, stop = lead - orig_lead * axis.in_step, lead + length + orig_trail * axis.in_step
        else:
            start, stop = lead, lead + length
        mask = torch.zeros(1, 1, padded_len, dtype=like.dtype, device=like.device)
        mask[..., max(start, 0) : min(stop, padded_len)] = 1
        kernel = torch.ones(1, 1, axis.kernel, dtype=like.dtype, device=like.device)
        counts = F.conv1d(
            mask, kernel, stride=axis.dense_stride, dilation=axis.dense_dilation
        ).flatten()
        return counts[:out_len]
