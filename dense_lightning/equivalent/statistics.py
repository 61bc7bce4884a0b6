"""Channel gates on the interleaved map: per-phase statistics without phase reshuffles.

A squeeze-excitation gate (timm's ``SEModule``, ``EffectiveSEModule`` and ``EcaModule``,
EfficientNet's ``SqueezeExcite``) reads one statistic per channel of its input (the spatial
mean, optionally mixed with the spatial max), turns it into a gate per channel and scales every
position by it. In a required phase region it runs on each phase of its input: split, gate,
interleave, two copies of the whole map per block. The same numbers come straight from the
dense map. Its view ``[N, C, H/sh, sh, W/sw, sw]`` holds phase ``(a, b)`` at ``[:, :, :, a, :,
b]``, so the per-phase statistics are a reduction over dims 2 and 4, the gate network runs on
the ``sh*sw*N`` statistics in the phase-major batch order of the phase layout (a batch norm
inside the gate sees the same elements), and the gates scale the view by broadcasting. Only the
gate's input and output (one value per channel and phase) are reordered.

Only these exact classes are recognised: a subclass may compute its gate differently.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["channel_gate", "gate_on_dense_map"]

Step = tuple[int, int]
Lazy = Callable[[], torch.Tensor]  # the per-phase max, computed only for gates that read it


def _pooled(module: nn.Module, mean: torch.Tensor, amax: Lazy) -> torch.Tensor:
    if getattr(module, "add_maxpool", False):
        return 0.5 * mean + 0.5 * amax()  # timm's experimental mean + max squeeze
    return mean


def _se_module(module: nn.Module, mean: torch.Tensor, amax: Lazy) -> torch.Tensor:
    x_se = module.fc1(_pooled(module, mean, amax))
    return module.gate(module.fc2(module.act(module.bn(x_se))))


def _effective_se(module: nn.Module, mean: torch.Tensor, amax: Lazy) -> torch.Tensor:
    return module.gate(module.fc(_pooled(module, mean, amax)))


def _efficientnet_se(module: nn.Module, mean: torch.Tensor, amax: Lazy) -> torch.Tensor:
    return module.gate(module.conv_expand(module.act1(module.conv_reduce(mean))))


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
    view = x.view(n, c, h // sh, sh, w // sw, sw)
    mean = view.mean((2, 4))  # [N, C, sh, sw]: one mean per channel and phase

    def phase_major(stat: torch.Tensor) -> torch.Tensor:
        return stat.permute(2, 3, 0, 1).reshape(sh * sw * n, c, 1, 1)

    gates = gate(module, phase_major(mean), lambda: phase_major(view.amax((2, 4))))
    per_cell = gates.reshape(sh, sw, n, c).permute(2, 3, 0, 1)  # [N, C, sh, sw]
    return (view * per_cell[:, :, None, :, None, :]).reshape(n, c, h, w)
