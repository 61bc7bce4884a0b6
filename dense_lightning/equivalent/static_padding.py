"""Layers that pad by a fixed amount in a child module: EfficientNet-PyTorch's "static same".

``Conv2dStaticSamePadding`` and ``MaxPool2dStaticSamePadding`` (EfficientNet-PyTorch, copied
into segmentation_models_pytorch for its native ``efficientnet-b*`` encoders) compute TF-"same"
padding once, for the image size given at construction, and keep it as a child
``static_padding`` (an ``nn.ZeroPad2d``, or ``nn.Identity`` when nothing is padded). Whatever
the input size, they then pad by that fixed, often asymmetric amount. For the lattice this is
an ordinary fixed ``(lead, trail)`` padding: the dense layer pads ``lead * step`` itself, so the
child is bypassed (it would pad the dense map by the original amount, not by the step).

The pool pads with zeros, not ``-inf``; its dense version does the same, which is exact on the
lattice because every padded cell that an original window reads is a zero there too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dense_lightning.equivalent.base import pair
from dense_lightning.equivalent.lattice import LatticeGeometry
from dense_lightning.equivalent.layers import EMaxPool2d

__all__ = ["STATIC_PADDING_LAYERS", "EZeroPadMaxPool2d", "static_padding"]

#: Class names of the layers whose fixed padding lives in a ``static_padding`` child.
STATIC_PADDING_LAYERS = frozenset({"Conv2dStaticSamePadding", "MaxPool2dStaticSamePadding"})

Padding = tuple[tuple[int, int], tuple[int, int]]


class StaticPaddingError(ValueError):
    """A ``static_padding`` child that is not a zero padding (cannot be given holes)."""


def static_padding(module: nn.Module) -> Padding | None:
    """``((lead_h, trail_h), (lead_w, trail_w))`` of a static-same layer, else ``None``.

    The layer's own ``padding`` (zero for EfficientNet-PyTorch) adds to the child's.

    Raises:
        StaticPaddingError: The child pads with something other than zeros.
    """
    if type(module).__name__ not in STATIC_PADDING_LAYERS:
        return None
    child = module._modules.get("static_padding")
    own_h, own_w = pair(module.padding)
    if child is None or isinstance(child, nn.Identity):
        return (own_h, own_h), (own_w, own_w)
    if type(child) is nn.ZeroPad2d or (
        isinstance(child, nn.ConstantPad2d) and float(child.value) == 0.0
    ):
        left, right, top, bottom = child.padding
        return (top + own_h, bottom + own_h), (left + own_w, right + own_w)
    raise StaticPaddingError(
        f"its static_padding is a {type(child).__name__}, not a zero padding; only zero "
        "padding can be scaled with the lattice step"
    )


class EZeroPadMaxPool2d(EMaxPool2d):
    """Equivalent max pool for a layer that pads with zeros (``MaxPool2dStaticSamePadding``)."""

    def _run(self, x: torch.Tensor, g: LatticeGeometry) -> torch.Tensor:
        x, _ = g.pad(x, 0.0)
        return F.max_pool2d(x, pair(self.kernel_size), g.dense_stride, 0, g.dense_dilation)
