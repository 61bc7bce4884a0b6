"""Losses for dense heads: penalty-reduced focal loss on heatmaps and masked L1 at instances."""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gather_cells", "heatmap_focal_loss", "masked_l1_loss"]


def heatmap_focal_loss(
    logits: Tensor,
    target: Tensor,
    positive: Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
) -> Tensor:
    """CenterNet's penalty-reduced focal loss, averaged over positive cells.

    Negatives near a peak are down-weighted by ``(1 - target) ** beta``, so the loss tolerates
    the neighbours of a centre; with real-valued Gaussian centres this weighting is asymmetric and
    teaches the map where inside the cell the point lies.

    Args:
        logits: ``[B, C, h, w]`` raw head outputs.
        target: ``[B, C, h, w]`` Gaussian heatmap in ``[0, 1]``.
        positive: boolean mask of the peak cells.
        alpha: focusing exponent on the prediction.
        beta: exponent of the penalty reduction around peaks.

    Returns:
        A scalar loss.
    """
    logits = logits.float()
    prob = logits.sigmoid()
    # logsigmoid keeps the loss finite for saturated logits where log(sigmoid) would give -inf.
    pos_loss = -((1 - prob) ** alpha) * F.logsigmoid(logits)
    neg_loss = -((1 - target) ** beta) * prob**alpha * F.logsigmoid(-logits)
    loss = torch.where(positive, pos_loss, neg_loss).sum()
    return loss / positive.sum().clamp(min=1)


def gather_cells(maps: Tensor, batch: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """Read the channel vectors of ``maps`` (``[B, D, h, w]``) at the given cells, ``[M, D]``."""
    return maps[batch, :, ys, xs]


def masked_l1_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error over the unmasked elements; zero (with a graph) when none are left.

    Args:
        pred: predictions, any shape.
        target: targets, same shape.
        mask: optional boolean mask broadcastable to ``pred`` without its last dimension
            (e.g. ``[M, K]`` for ``[M, K, 2]``); masked entries do not count.

    Returns:
        A scalar loss.
    """
    err = (pred.float() - target.float()).abs()
    if mask is not None:
        weight = mask.unsqueeze(-1).expand_as(err).float()
        return (err * weight).sum() / weight.sum().clamp(min=1)
    if err.numel() == 0:
        # Keep the graph so DDP sees a gradient for every parameter even without instances.
        return pred.sum() * 0.0
    return err.mean()
