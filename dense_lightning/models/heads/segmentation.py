"""Segmentation heads made only of local layers, so a dense conversion covers them exactly.

No global pooling and no interpolation: a head maps features to class logits at feature
resolution, and upsampling to the label size happens outside the convertible network.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

__all__ = [
    "SEGMENTATION_HEADS",
    "ASPPHead",
    "FCNHead",
    "LinearHead",
    "SegmentationHeadName",
    "build_segmentation_head",
]

SegmentationHeadName = Literal["fcn", "aspp", "linear"]
SEGMENTATION_HEADS: tuple[str, ...] = get_args(SegmentationHeadName)


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel: int, dilation: int = 1
) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LinearHead(nn.Module):
    """A 1x1 convolution from features to logits (a linear probe per position)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``[B, num_classes, h, w]`` for features ``[B, C, h, w]``."""
        return self.classifier(self.dropout(x))


class FCNHead(nn.Module):
    """The FCN head: 3x3 conv-BN-ReLU, dropout, 1x1 classifier."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.block = _conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``[B, num_classes, h, w]`` for features ``[B, C, h, w]``."""
        return self.classifier(self.dropout(self.block(x)))


class ASPPHead(nn.Module):
    """DeepLab's atrous spatial pyramid without its image-pooling branch.

    The image-pooling branch averages over the whole map, which a dense map with more
    positions would average differently; leaving it out keeps the head exactly convertible.
    Rates are in cells of the feature map the head sees; a dense conversion scales them.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 128,
        dropout: float = 0.1,
        rates: tuple[int, ...] = (2, 4, 6),
    ) -> None:
        super().__init__()
        branches = [_conv_bn_relu(in_channels, channels, 1)]
        branches += [_conv_bn_relu(in_channels, channels, 3, rate) for rate in rates]
        self.branches = nn.ModuleList(branches)
        self.project = _conv_bn_relu(channels * len(branches), channels, 1)
        self.block = _conv_bn_relu(channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``[B, num_classes, h, w]`` for features ``[B, C, h, w]``."""
        x = self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
        return self.classifier(self.dropout(self.block(x)))


def build_segmentation_head(
    kind: SegmentationHeadName,
    in_channels: int,
    num_classes: int,
    channels: int = 128,
    dropout: float = 0.1,
) -> nn.Module:
    """Build a segmentation head by name.

    Args:
        kind: ``"fcn"``, ``"aspp"`` or ``"linear"``.
        in_channels: channels of the feature map the head reads.
        num_classes: number of output classes.
        channels: hidden width (unused by ``"linear"``).
        dropout: channel dropout before the classifier.

    Returns:
        The head module.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "fcn":
        return FCNHead(in_channels, num_classes, channels, dropout)
    if kind == "aspp":
        return ASPPHead(in_channels, num_classes, channels, dropout)
    if kind == "linear":
        return LinearHead(in_channels, num_classes, dropout)
    raise ValueError(f"Unknown segmentation head {kind!r}; choose one of {SEGMENTATION_HEADS}.")
