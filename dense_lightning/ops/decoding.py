"""Decoding of dense head outputs: heatmap peaks, sub-pixel refinement, boxes and keypoints.

Everything here runs outside the network, so none of it has to be equivalent under the dense
mapping: the 3x3 max-pool "NMS" and the box NMS only see the final maps. Cells sit where their
:class:`~dense_lightning.equivalent.cells.CellGeometry` puts them, as in
:mod:`dense_lightning.ops.encoding`.
"""

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from dense_lightning.equivalent.cells import CellGeometry

__all__ = [
    "decode_centres",
    "decode_detections",
    "gather_peaks",
    "heatmap_nms",
    "nms_keep",
    "refine_peaks",
    "topk_peaks",
]

RefineMethod = Literal["quarter", "soft_argmax", "none"]

# exp() of a wild log-size prediction from an untrained head would overflow to inf boxes.
_MAX_LOG_SIZE = 12.0


def heatmap_nms(heat: Tensor, kernel: int = 3) -> Tensor:
    """Zero every cell of ``heat`` (``[B, C, h, w]``) that is not a local maximum."""
    pooled = F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)
    return heat * (pooled == heat)


def topk_peaks(heat: Tensor, k: int, per_channel: bool = False) -> dict[str, Tensor]:
    """Return the ``k`` highest cells of ``heat`` (``[B, C, h, w]``, after :func:`heatmap_nms`).

    Args:
        heat: scores per channel and cell.
        k: number of peaks (clipped to the number of cells).
        per_channel: take ``k`` peaks in each channel (``[B, C, k]`` outputs) instead of ``k``
            over all channels (``[B, k]``).

    Returns:
        ``scores``, ``channels``, ``ys``, ``xs`` with the shapes above.
    """
    b, c, h, w = heat.shape
    flat = heat.reshape(b, c, h * w) if per_channel else heat.reshape(b, c * h * w)
    scores, index = flat.topk(min(k, flat.shape[-1]), dim=-1)
    if per_channel:
        channels = torch.arange(c, device=heat.device).view(1, c, 1).expand_as(index)
        cell = index
    else:
        channels, cell = index // (h * w), index % (h * w)
    return {"scores": scores, "channels": channels, "ys": cell // w, "xs": cell % w}


def refine_peaks(
    heat: Tensor, channels: Tensor, ys: Tensor, xs: Tensor, method: RefineMethod = "quarter"
) -> tuple[Tensor, Tensor]:
    """Sub-cell offsets ``(dx, dy)`` of peaks, from their neighbours on the heatmap.

    ``quarter`` moves a quarter cell toward the higher of the two neighbours on each axis (the
    rule of Newell et al. and SimpleBaseline); ``soft_argmax`` takes the score-weighted centroid
    of the 3x3 window. Cells outside the map read as zero.

    Args:
        heat: ``[B, C, h, w]`` non-negative scores (probabilities, not logits).
        channels: ``[B, ...]`` channel of each peak.
        ys: ``[B, ...]`` row of each peak.
        xs: ``[B, ...]`` column of each peak.
        method: the refinement rule.

    Returns:
        ``dx`` and ``dy`` in cells, shaped like ``xs``.
    """
    if method == "none":
        return torch.zeros_like(xs, dtype=heat.dtype), torch.zeros_like(ys, dtype=heat.dtype)
    padded = F.pad(heat, (1, 1, 1, 1))
    batch = torch.arange(heat.shape[0], device=heat.device).view(-1, *[1] * (xs.dim() - 1))

    def at(dy: int, dx: int) -> Tensor:
        return padded[batch, channels, ys + 1 + dy, xs + 1 + dx]

    if method == "quarter":
        return 0.25 * torch.sign(at(0, 1) - at(0, -1)), 0.25 * torch.sign(at(1, 0) - at(-1, 0))
    if method != "soft_argmax":
        raise ValueError(f"unknown refine method {method!r}; use one of {get_args(RefineMethod)}")
    weights = torch.stack([at(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dim=-1)
    grid = torch.tensor([-1.0, 0.0, 1.0], device=heat.device, dtype=heat.dtype)
    gx, gy = grid.repeat(3), grid.repeat_interleave(3)
    total = weights.sum(-1).clamp(min=1e-12)
    return (weights * gx).sum(-1) / total, (weights * gy).sum(-1) / total


def _boxes_from_centres(cx: Tensor, cy: Tensor, log_size: Tensor) -> Tensor:
    """``xyxy`` boxes from centres and ``[..., 2]`` log (w, h)."""
    size = log_size.clamp(max=_MAX_LOG_SIZE).exp()
    return torch.stack(
        [
            cx - size[..., 0] / 2,
            cy - size[..., 1] / 2,
            cx + size[..., 0] / 2,
            cy + size[..., 1] / 2,
        ],
        dim=-1,
    )


def gather_peaks(maps: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """Read ``maps`` (``[B, D, h, w]``) at ``[B, N]`` cells, giving ``[B, N, D]``."""
    batch = torch.arange(maps.shape[0], device=maps.device).view(-1, 1)
    return maps[batch, :, ys, xs]


def decode_centres(
    outputs: dict[str, Tensor], geometry: CellGeometry, max_detections: int = 100
) -> dict[str, Tensor]:
    """Top-k instance centres of a CenterNet output, as boxes in image coordinates.

    Args:
        outputs: ``heatmap`` logits ``[B, C, h, w]``, ``size`` and ``offset`` ``[B, 2, h, w]``.
        geometry: where the maps' cells sit.
        max_detections: peaks kept per image.

    Returns:
        ``boxes`` ``[B, k, 4]``, ``scores``, ``labels``, ``ys``, ``xs`` (``[B, k]``) and the
        ``anchors`` ``[B, k, 2]``: positions ``(x, y)`` of the peak cells.
    """
    heat = heatmap_nms(outputs["heatmap"].float().sigmoid())
    peaks = topk_peaks(heat, max_detections)
    ys, xs = peaks["ys"], peaks["xs"]
    anchors = geometry.cells_to_points(torch.stack([xs, ys], dim=-1).float())
    centres = anchors + gather_peaks(outputs["offset"].float(), ys, xs)
    boxes = _boxes_from_centres(
        centres[..., 0], centres[..., 1], gather_peaks(outputs["size"].float(), ys, xs)
    )
    return {
        "boxes": boxes,
        "scores": peaks["scores"],
        "labels": peaks["channels"],
        "ys": ys,
        "xs": xs,
        "anchors": anchors,
    }


def nms_keep(
    boxes: Tensor, scores: Tensor, labels: Tensor, score_threshold: float, iou_threshold: float
) -> Tensor:
    """Indices that survive the score threshold and per-class box NMS, best first."""
    keep = (scores >= score_threshold).nonzero().flatten()
    return keep[batched_nms(boxes[keep], scores[keep], labels[keep], iou_threshold)]


def decode_detections(
    outputs: dict[str, Tensor],
    geometry: CellGeometry,
    max_detections: int = 100,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.6,
    image_size: tuple[int, int] | None = None,
) -> list[dict[str, Tensor]]:
    """Decode CenterNet outputs into per-image boxes (torchmetrics' detection format).

    Peaks come from a 3x3 max-pool on the heatmap; a dense map has ``k x k`` more cells, so
    neighbouring cells can both peak on one object and a class-wise box NMS removes them.

    Args:
        outputs: raw head outputs (``heatmap`` logits, ``size``, ``offset``).
        geometry: where the maps' cells sit.
        max_detections: peaks considered per image.
        score_threshold: drop detections scoring below this.
        iou_threshold: IoU above which box NMS suppresses a detection.
        image_size: optional ``(height, width)`` to clip boxes to.

    Returns:
        One dict per image with ``boxes`` ``[N, 4]`` (xyxy pixels), ``scores`` and ``labels``.
    """
    dec = decode_centres(outputs, geometry, max_detections)
    if image_size is not None:
        h, w = image_size
        dec["boxes"][..., 0::2] = dec["boxes"][..., 0::2].clamp(0, w)
        dec["boxes"][..., 1::2] = dec["boxes"][..., 1::2].clamp(0, h)
    results = []
    for boxes, scores, labels in zip(dec["boxes"], dec["scores"], dec["labels"], strict=True):
        keep = nms_keep(boxes, scores, labels, score_threshold, iou_threshold)
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results
