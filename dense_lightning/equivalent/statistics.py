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
elements), and the gates, spread into one row per phase row, scale the map by broadcasting.
Only the gate's input and output (one value per channel and phase) are reordered.

Only these exact classes are recognised: a subclass may compute its gate differently.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

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
    # Rows first: reducing the contiguous row dimension before the strided column one, and
    # scaling by a gate row that spans W, keeps every pass over the map contiguous (a 6-d view
    # reduced and broadcast over dims 2 and 4 walks it with stride sw, several times slower).
    rows = x.view(n, c, h // sh, sh, w)
    mean = rows.mean(2).view(n, c, sh, w // sw, sw).mean(3)  # [N, C, sh, sw]: per phase

    def phase_major(stat: torch.Tensor) -> torch.Tensor:
        return stat.permute(2, 3, 0, 1).reshape(sh * sw * n, c, 1, 1)

    def amax() -> torch.Tensor:
        return phase_major(rows.amax(2).view(n, c, sh, w // sw, sw).amax(3))

    gates = gate(module, phase_major(mean), amax)
    per_cell = gates.reshape(sh, sw, n, c).permute(2, 3, 0, 1)  # [N, C, sh, sw]
    # The gate of every position of a row of phase a: per_cell[..., a, j % sw] along W.
    row_gate = per_cell[:, :, :, None, :].expand(n, c, sh, w // sw, sw).reshape(n, c, 1, sh, w)
    return (rows * row_gate).view(n, c, h, w)
