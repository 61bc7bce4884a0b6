"""Channel gates on the interleaved map: per-phase statistics without phase reshuffles.

A squeeze-excitation gate (timm's ``SEModule``, ``EffectiveSEModule`` and ``EcaModule``,
EfficientNet's ``SqueezeExcite``) reads one statistic per channel of its input (the spatial
mean, optionally mixed with the spatial max), turns it into a gate per channel and scales every
position by it. In a required phase region it runs on each phase of its input: split, gate,
interleave, two copies of the whole map per block. The same numbers come straight from the
dense map. Its view ``[N, C, H/sh, sh, W/sw, sw]`` holds phase ``(a, b)`` at ``[:, :, :, a, :,
b]``, so the per-phase statistics are a reduction over dims 2 and 4 (taken rows first, so each
pass over the map is contiguous), the gate network runs on the ``sh*sw*N`` statistics in the
phase-major batch order of the phase layout (a batch norm inside the gate sees the same
elements), and the gates, repeated along each phase row, scale the map in one product.
Only the gate's input and output (one value per channel and phase) are reordered; the backward
pass keeps only the input and the gates, as ``x * gate`` does.

Only these exact classes are recognised: a subclass may compute its gate differently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["channel_gate", "gate_on_dense_map"]

Step = tuple[int, int]
Lazy = Callable[[], torch.Tensor]  # the per-phase max, computed only for gates that read it


def _pointwise(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A gate layer on ``[B, C, 1, 1]`` statistics; a plain 1x1 convolution runs as a matmul.

    On the CPU a 1x1 convolution over a batch of 1x1 maps costs about twice the same product as
    ``linear`` (per-sample convolution set-up), and the per-phase gate runs on ``k*k`` times the
    batch. The numbers are the same; anything else (grouped, padded, hooked, subclassed) runs as
    the module.
    """
    if (
        type(layer) is nn.Conv2d
        and layer.kernel_size == (1, 1)
        and layer.groups == 1
        and layer.padding == (0, 0)
        and not (layer._forward_hooks or layer._forward_pre_hooks)
    ):
        return F.linear(x.flatten(1), layer.weight.flatten(1), layer.bias)[..., None, None]
    return layer(x)


def _pooled(module: nn.Module, mean: torch.Tensor, amax: Lazy) -> torch.Tensor:
    if getattr(module, "add_maxpool", False):
        return 0.5 * mean + 0.5 * amax()  # timm's experimental mean + max squeeze
    return mean


def _se_module(module: nn.Module, mean: torch.Tensor, amax: Lazy) -> torch.Tensor:
    x_se = _pointwise(module.fc1, _pooled(module, mean, amax))
    return module.gate(_pointwise(module.fc2, module.act(module.bn(x_se))))


def _effective_se(module: nn.Module, mean: torch.Tensor, amax: Lazy) -> torch.Tensor:
    return module.gate(_pointwise(module.fc, _pooled(module, mean, amax)))


def _efficientnet_se(module: nn.Module, mean: torch.Tensor, amax: Lazy) -> torch.Tensor:
    x_se = module.act1(_pointwise(module.conv_reduce, mean))
    return module.gate(_pointwise(module.conv_expand, x_se))


def _eca(module: nn.Module, mean: torch.Tensor, amax: Lazy) -> torch.Tensor:
    y = module.conv(mean.view(mean.shape[0], 1, -1))  # a 1-d conv across channels
    if module.conv2 is not None:
        y = module.conv2(module.act(y))
    return module.gate(y).view(mean.shape[0], -1, 1, 1)


def _gates() -> dict[type, Callable]:
    """The recognised classes (imported lazily: the core needs no timm at import time)."""
    try:
        from timm.layers.eca import EcaModule
        from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
        from timm.models._efficientnet_blocks import SqueezeExcite
    except ImportError:  # pragma: no cover - timm is a dependency; keep the core usable
        return {}
    return {
        SEModule: _se_module,
        EffectiveSEModule: _effective_se,
        SqueezeExcite: _efficientnet_se,
        EcaModule: _eca,
    }


_GATES: dict[type, Callable] | None = None


def channel_gate(module: nn.Module) -> Callable | None:
    """The gate function of a recognised squeeze-excitation module, else ``None``."""
    global _GATES
    if _GATES is None:
        _GATES = _gates()
    return _GATES.get(type(module))


def gate_on_dense_map(
    module: nn.Module, gate: Callable, x: torch.Tensor, step: Step
) -> torch.Tensor:
    """What ``module`` computes on each ``step``-phase of ``x``, interleaved, without splitting.

    Args:
        module: A module recognised by :func:`channel_gate`.
        gate: Its gate function.
        x: Its dense input ``[N, C, H, W]``; ``H`` and ``W`` are multiples of ``step``.
        step: The lattice step of ``x`` relative to the layout it is in.

    Returns:
        The output in the layout of ``x``: each phase scaled by its own gate.
    """
    (sh, sw), (n, c, h, w) = step, x.shape

    def phase_major(stat: torch.Tensor) -> torch.Tensor:
        return stat.permute(2, 3, 0, 1).reshape(sh * sw * n, c, 1, 1)

    # The per-phase means ([N, C, sh, sw]) are not kept past the gate: they would be live
    # next to the map and its scaled copy.
    mean = phase_major(_per_phase(x, step, torch.sum)) / ((h // sh) * (w // sw))
    gates = gate(module, mean, lambda: phase_major(_per_phase(x, step, torch.amax)))
    del mean
    per_cell = gates.reshape(sh, sw, n, c).permute(2, 3, 0, 1)  # [N, C, sh, sw]
    if torch.compiler.is_compiling():  # a compiler fuses the broadcast into one pass
        view = x.view(n, c, h // sh, sh, w // sw, sw)
        return (view * per_cell[:, :, None, :, None, :]).view(n, c, h, w)
    if torch.is_grad_enabled() and (x.requires_grad or per_cell.requires_grad):
        return _PhaseScale.apply(x, per_cell)
    return _scaled(x, per_cell)


def _scaled(x: torch.Tensor, per_cell: torch.Tensor) -> torch.Tensor:
    """``x`` with each phase scaled by its gate ``per_cell[N, C, sh, sw]``.

    Row ``a`` of every ``sh`` rows is scaled by its gates repeated along ``W`` (``per_cell[...,
    a, j % sw]`` at column ``j``), so the product is one contiguous pass over the map. A 6-d
    broadcast over the phase view walks the map with stride ``sw`` (several times slower), and
    a loop over phase rows costs more calls than the repeated gates save. The repeated gates
    are ``sh/H`` of the map, live next to the input and the output: made for a few channels at
    a time, they stay under ``1 / _GATE_ROWS_FRACTION`` of it, so the product holds about the
    memory of a plain ``x * gate``.
    """
    (n, c, h, w), (sh, sw) = x.shape, per_cell.shape[2:]
    # Written through a view of its own output: the result is not a view, so the in-place
    # residual sums after a gate are allowed on it.
    out = torch.empty(x.shape, dtype=torch.result_type(x, per_cell), device=x.device)
    planes, rows = n * c, h // sh
    x_rows, out_rows = x.reshape(planes, rows, sh, w), out.view(planes, rows, sh, w)
    gates = per_cell.reshape(planes, sh, 1, sw)
    chunk = max(1, planes * rows // _GATE_ROWS_FRACTION)
    for start in range(0, planes, chunk):
        stop = min(start + chunk, planes)
        row_gate = gates[start:stop].expand(stop - start, sh, w // sw, sw).reshape(-1, 1, sh, w)
        torch.mul(x_rows[start:stop], row_gate, out=out_rows[start:stop])
    return out


# The repeated gate rows of one call of :func:`_scaled` are at most this fraction of its map.
_GATE_ROWS_FRACTION = 64


def _per_phase(x: torch.Tensor, step: Step, reduce: Callable) -> torch.Tensor:
    """``reduce`` (``torch.sum``, ``torch.amax``) of ``x`` over each phase: ``[N, C, sh, sw]``.

    Rows first: reducing the contiguous row dimension before the strided column one keeps every
    pass over the map contiguous (a 6-d view reduced over dims 2 and 4 walks it with stride
    ``sw``, several times slower).
    """
    (sh, sw), (n, c, h, w) = step, x.shape
    rows = reduce(x.view(n, c, h // sh, sh, w), 2)
    return reduce(rows.view(n, c, sh, w // sw, sw), 3)


class _PhaseScale(torch.autograd.Function):
    """:func:`_scaled` with a backward that keeps only ``x`` and the gates.

    Autograd through the repeated gate rows would keep them for the backward pass, ``sh/H`` of
    the map per gated block, which timm's ``x * gate`` does not keep.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, per_cell: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, per_cell)
        return _scaled(x, per_cell)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, per_cell = ctx.saved_tensors
        grad_x = grad_gate = None
        if ctx.needs_input_grad[0]:
            grad_x = _scaled(grad, per_cell).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_gate = _per_phase(grad * x, per_cell.shape[2:], torch.sum).to(per_cell.dtype)
        return grad_x, grad_gate
