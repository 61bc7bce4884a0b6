"""A dilated network built by hand from plain torch modules: the speed peer where timm has none.

timm builds a dilated model for ResNets, RegNets, MobileNets and EfficientNets, but refuses an
``output_stride`` for some families (DLA). There a user who wants a dense map writes the
dilation by hand, with the rule timm applies to a ResNet: the strides past the output stride
become 1, every later convolution and pool gets the removed stride as extra dilation, and its
padding scales with it. An even kernel (DLA's 2x2 max-pool downsample) has no centre: it is
padded after the input, by ``dilation * (k - 1)``, with a plain ``nn.ConstantPad2d`` in front.

The result is nothing but ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.AvgPool2d`` and pads, so timing
it against ``to_dense`` shows what our modules cost over the plain ones on the same MACs.
Where a layer's geometry falls outside the rule (padding that is not "same", ceil mode),
:func:`hand_dilated` raises instead of building something else.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["hand_dilated"]

_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _input_strides(model: nn.Module, size: int) -> dict[str, tuple[int, int]]:
    """Stride of each spatial layer's input and output (pixels per cell) on a probe."""
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str) -> object:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen.setdefault(name, (size // args[0].shape[-1], size // out.shape[-1]))

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, _SPATIAL)
    ]
    try:
        with torch.no_grad():
            model.forward_features(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _dilate(module: nn.Module, name: str, stride: int, dilation: int) -> nn.Module:
    """``module`` with stride ``stride`` and its dilation times ``dilation``, padded "same"."""
    kernel = _pair(module.kernel_size)
    old_dilation = _pair(getattr(module, "dilation", 1))
    old_padding = _pair(module.padding)
    old_stride = _pair(module.stride)
    if kernel[0] != kernel[1] or old_stride[0] != old_stride[1]:
        raise ValueError(f"{name}: only square kernels and strides are dilated by hand")
    if getattr(module, "ceil_mode", False) or isinstance(module.padding, str):
        raise ValueError(f"{name}: ceil mode and string padding are outside the hand rule")
    k = kernel[0]
    # A 1x1 kernel has no holes to spread: it keeps dilation 1, as timm's dilated models do.
    d = old_dilation[0] * dilation if k > 1 else old_dilation[0]
    reach = old_dilation[0] * (k - 1)
    if k % 2 == 1:
        if old_padding[0] * 2 != reach:
            raise ValueError(f"{name}: padding {old_padding} is not 'same' for kernel {k}")
        pad_before = pad_after = d * (k - 1) // 2
    else:
        if old_padding[0] != 0 or old_stride[0] != k:
            raise ValueError(f"{name}: an even kernel is dilated by hand only as k x k / k")
        pad_before, pad_after = 0, d * (k - 1) if stride == 1 else 0
    module.stride = (stride, stride)
    if isinstance(module, nn.AvgPool2d) and d > 1:
        raise ValueError(f"{name}: nn.AvgPool2d has no dilation")
    if hasattr(module, "dilation"):
        module.dilation = (d, d) if isinstance(module, nn.Conv2d) else d
    if pad_before == pad_after:
        module.padding = (pad_before, pad_before) if isinstance(module, nn.Conv2d) else pad_before
        return module
    module.padding = (0, 0) if isinstance(module, nn.Conv2d) else 0
    fill = float("-inf") if isinstance(module, nn.MaxPool2d) else 0.0
    pad = nn.ConstantPad2d((pad_before, pad_after, pad_before, pad_after), fill)
    return nn.Sequential(pad, module)


def hand_dilated(original: nn.Module, output_stride: int, probe: int = 64) -> nn.Module:
    """A copy of ``original`` (with ``forward_features``) dilated to ``output_stride`` by hand.

    Args:
        original: A timm feature network; left unchanged.
        output_stride: Target stride of the output, a power of two below the original's.
        probe: Side of the probe image that reads each layer's strides (a multiple of 32).

    Returns:
        The dilated copy, in ``original``'s mode.

    Raises:
        ValueError: A layer's geometry is outside the hand rule (named).
    """
    model = copy.deepcopy(original)
    strides = _input_strides(model, probe)
    modules = dict(model.named_modules())
    for name, (s_in, s_out) in strides.items():
        dense_in = min(s_in, output_stride)
        stride = max(1, min(s_out, output_stride) // dense_in)
        dilation = s_in // dense_in
        if stride == s_out // s_in and dilation == 1:
            continue  # before the output stride: unchanged
        parent_name, _, child = name.rpartition(".")
        replacement = _dilate(modules[name], name, stride, dilation)
        setattr(modules[parent_name] if parent_name else model, child, replacement)
    return model
