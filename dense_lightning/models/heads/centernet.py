"""CenterNet's anchor-free detection head, made only of local layers.

One map level, three branches of 3x3 conv, BatchNorm, ReLU, 1x1 conv: a class heatmap of
instance centres, the box size and the sub-cell centre offset. The head has no pooling,
upsampling or global context, so a dense conversion of backbone + head is exact; decoding (peak
picking, NMS) happens outside the network in :mod:`dense_lightning.ops`.

Units are chosen so that one set of weights means the same at every stride: ``size`` is the log
of the box width and height in input pixels, ``offset`` is the centre's position in input pixels
relative to the cell's anchor ``(x * stride, y * stride)``. A dense model sampled every ``k``
cells equals the original model, and these outputs stay correct there without rescaling.
"""

import math

from torch import Tensor, nn

__all__ = ["CenterNetHead", "head_branch", "heatmap_branch"]


def head_branch(
    in_channels: int, out_channels: int, channels: int, bias: float = 0.0
) -> nn.Sequential:
    """A prediction branch: 3x3 conv, BatchNorm, ReLU, 1x1 conv; the last bias set to ``bias``.

    BatchNorm is pointwise at inference, so it converts exactly; it makes the randomly
    initialised branches train noticeably faster from scratch (measured on the synthetic data).

    Args:
        in_channels: channels of the feature map.
        out_channels: channels predicted.
        channels: hidden width.
        bias: initial value of the output bias (e.g. the logit of a prior probability).

    Returns:
        The branch.
    """
    branch = nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, out_channels, 1),
    )
    nn.init.constant_(branch[-1].bias, bias)
    return branch


def heatmap_branch(
    in_channels: int, out_channels: int, channels: int, prior_prob: float
) -> nn.Sequential:
    """A heatmap branch whose sigmoid starts at ``prior_prob`` everywhere (focal-loss init).

    Raises:
        ValueError: ``prior_prob`` outside ``(0, 1)``.
    """
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
    return head_branch(
        in_channels, out_channels, channels, bias=-math.log((1 - prior_prob) / prior_prob)
    )


class CenterNetHead(nn.Module):
    """Centre heatmap, box size and centre offset predicted at every cell.

    Args:
        in_channels: channels of the backbone feature map.
        num_classes: heatmap channels, one per class.
        channels: hidden width of each branch.
        prior_prob: initial heatmap probability; CenterNet's ``-2.19`` bias is ``0.1``. A low
            prior keeps the focal loss of the many background cells small at the start.
        size_prior: initial box side in pixels, so untrained boxes have a plausible scale.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 64,
        prior_prob: float = 0.1,
        size_prior: float = 32.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.heatmap = heatmap_branch(in_channels, num_classes, channels, prior_prob)
        self.size = head_branch(in_channels, 2, channels, bias=math.log(size_prior))
        self.offset = head_branch(in_channels, 2, channels)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return raw outputs for features ``[B, C, h, w]``.

        Returns:
            ``heatmap`` logits ``[B, num_classes, h, w]``, ``size`` (log pixels) and ``offset``
            (pixels) ``[B, 2, h, w]``.
        """
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}
