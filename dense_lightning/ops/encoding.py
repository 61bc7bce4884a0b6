"""Target encoding for dense heads: Gaussian heatmaps, size, offset and keypoint targets.

Coordinate convention, shared with decoding: cell ``j`` of a map with stride ``s`` is anchored at
input pixel ``j * s``. For a timm CNN with "same" padding that is where the cell's receptive field
is centred, and it is the convention under which a dense map (stride ``s / k``) sampled every ``k``
cells lands on the original lattice, so one set of weights means the same thing at both strides.
Regression targets are therefore in input pixels (or log pixels), never in cells.
"""

import torch
from torch import Tensor

__all__ = [
    "draw_gaussians",
    "encode_detection_targets",
    "encode_keypoint_targets",
    "gaussian_radius",
    "infer_stride",
]


def infer_stride(image_size: tuple[int, int], map_size: tuple[int, int]) -> int:
    """Return the stride of a dense map from the input and map sizes.

    The stride is the smallest power of two ``p`` with ``cells * p >= pixels`` on both axes. This
    holds for the original strided network (``cells = ceil(pixels / s)``) and for its dense
    version (``ceil(pixels / s) * k`` cells at stride ``s / k``) as long as the original map has
    more than one cell, so the same task encodes targets correctly whether it trains dense or not.

    Args:
        image_size: input ``(height, width)`` in pixels.
        map_size: output ``(height, width)`` in cells.

    Returns:
        The stride in input pixels per cell.
    """
    stride = 1
    for pixels, cells in zip(image_size, map_size, strict=True):
        if cells <= 0:
            raise ValueError(f"map size must be positive, got {tuple(map_size)}")
        candidate = 1
        while cells * candidate < pixels:
            candidate *= 2
        stride = max(stride, candidate)
    return stride


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.7) -> Tensor:
    """Return CenterNet's Gaussian radius for boxes of the given size.

    The radius is how far a corner may move while the box keeps IoU ``min_overlap`` with the
    ground truth; this is the formula of the CenterNet reference code (kept as is, so radii match
    published models).

    Args:
        height: box heights, any shape, in cells.
        width: box widths, same shape.
        min_overlap: the IoU the shifted box must keep.

    Returns:
        The radius for each box, in cells, clamped at zero.
    """
    m = min_overlap
    b1 = height + width
    c1 = width * height * (1 - m) / (1 + m)
    r1 = (b1 + torch.sqrt((b1**2 - 4 * c1).clamp(min=0))) / 2
    b2 = 2 * (height + width)
    c2 = (1 - m) * width * height
    r2 = (b2 + torch.sqrt((b2**2 - 16 * c2).clamp(min=0))) / 2
    b3 = -2 * m * (height + width)
    c3 = (m - 1) * width * height
    r3 = (b3 + torch.sqrt((b3**2 - 16 * m * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).clamp(min=0)


def draw_gaussians(
    heatmap: Tensor, centers: Tensor, sigmas: Tensor, channels: Tensor
) -> tuple[Tensor, Tensor]:
    """Draw one Gaussian per instance into ``heatmap`` (max over overlaps) and mark its peak.

    Centres are real-valued (in cells), so the map also encodes where inside a cell the point
    lies; sub-pixel refinement at decode time reads that back. The peak cell (the nearest one) is
    set to exactly 1 and returned as the positive mask of the focal loss.

    Args:
        heatmap: ``[C, h, w]`` map updated in place.
        centers: ``[N, 2]`` points as ``(x, y)`` in cells.
        sigmas: ``[N]`` standard deviations in cells.
        channels: ``[N]`` int64 channel of each point.

    Returns:
        The heatmap and a boolean ``[C, h, w]`` mask of positive cells.
    """
    _, h, w = heatmap.shape
    positive = torch.zeros_like(heatmap, dtype=torch.bool)
    if centers.numel() == 0:
        return heatmap, positive
    ys = torch.arange(h, dtype=heatmap.dtype, device=heatmap.device).view(1, h, 1)
    xs = torch.arange(w, dtype=heatmap.dtype, device=heatmap.device).view(1, 1, w)
    cx, cy = centers[:, 0].view(-1, 1, 1), centers[:, 1].view(-1, 1, 1)
    var = (sigmas.view(-1, 1, 1) ** 2).clamp(min=1e-6)
    sq_dist = (xs - cx) ** 2 + (ys - cy) ** 2
    # Cut the tails at 3 sigma, as CenterNet's window does, so far cells stay pure negatives.
    gauss = torch.exp(-sq_dist / (2 * var)) * (sq_dist <= 9 * var)
    index = channels.view(-1, 1).expand(-1, h * w)
    heatmap.view(-1, h * w).scatter_reduce_(0, index, gauss.view(-1, h * w), "amax")
    px = centers[:, 0].round().long().clamp(0, w - 1)
    py = centers[:, 1].round().long().clamp(0, h - 1)
    heatmap[channels, py, px] = 1.0
    positive[channels, py, px] = True
    return heatmap, positive


def _instance_geometry(boxes: Tensor, stride: int, map_size: tuple[int, int]) -> dict[str, Tensor]:
    """Centre cell, anchor offset, log size and Gaussian sigma of each box (boxes in pixels)."""
    h, w = map_size
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0)
    cells = centers / stride
    xs = cells[:, 0].round().long().clamp(0, w - 1)
    ys = cells[:, 1].round().long().clamp(0, h - 1)
    anchors = torch.stack([xs, ys], dim=1).to(boxes.dtype) * stride
    radius = gaussian_radius(sizes[:, 1] / stride, sizes[:, 0] / stride)
    return {
        "cells": cells,
        "xs": xs,
        "ys": ys,
        "offset": centers - anchors,
        "size": sizes.log(),
        "sigma": (2 * radius + 1) / 6,
        "anchors": anchors,
    }


def _valid_boxes(boxes: Tensor) -> Tensor:
    """Mask of boxes with positive width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def encode_detection_targets(
    boxes: list[Tensor],
    labels: list[Tensor],
    num_classes: int,
    map_size: tuple[int, int],
    stride: int,
) -> dict[str, Tensor]:
    """Encode boxes as CenterNet targets for a map of ``map_size`` cells at ``stride``.

    Args:
        boxes: per image ``[N, 4]`` boxes, ``xyxy`` in input pixels.
        labels: per image ``[N]`` int64 class indices.
        num_classes: number of heatmap channels.
        map_size: ``(h, w)`` of the head's output.
        stride: input pixels per cell (see :func:`infer_stride`).

    Returns:
        ``heatmap`` ``[B, C, h, w]``, ``positive`` mask of the same shape, and per instance
        (flattened over the batch) ``batch``, ``ys``, ``xs`` cell indices, ``size`` (log pixels)
        and ``offset`` (pixels from the anchor ``(x * stride, y * stride)``) targets.
    """
    device = boxes[0].device if boxes else torch.device("cpu")
    heatmap = torch.zeros(len(boxes), num_classes, *map_size, device=device)
    positive = torch.zeros_like(heatmap, dtype=torch.bool)
    rows: dict[str, list[Tensor]] = {k: [] for k in ("batch", "ys", "xs", "size", "offset")}
    for i, (img_boxes, img_labels) in enumerate(zip(boxes, labels, strict=True)):
        keep = _valid_boxes(img_boxes)
        img_boxes, img_labels = img_boxes[keep].float(), img_labels[keep].long()
        geo = _instance_geometry(img_boxes, stride, map_size)
        _, positive[i] = draw_gaussians(heatmap[i], geo["cells"], geo["sigma"], img_labels)
        rows["batch"].append(torch.full_like(img_labels, i))
        for key in ("ys", "xs", "size", "offset"):
            rows[key].append(geo[key])
    out = {key: _cat(parts, device) for key, parts in rows.items()}
    out["size"] = out["size"].reshape(-1, 2).float()
    out["offset"] = out["offset"].reshape(-1, 2).float()
    return {"heatmap": heatmap, "positive": positive, **out}


def encode_keypoint_targets(
    boxes: list[Tensor],
    keypoints: list[Tensor],
    map_size: tuple[int, int],
    stride: int,
) -> dict[str, Tensor]:
    """Encode per-instance keypoints as heatmaps and centre displacements.

    Keypoints with visibility 0 (not labelled, COCO) or outside the map get no Gaussian and are
    masked out of the displacement loss. Each keypoint's Gaussian uses its instance's box radius,
    so the target scales with the object and not with the stride.

    Args:
        boxes: per image ``[N, 4]`` boxes, ``xyxy`` in input pixels.
        keypoints: per image ``[N, K, 3]`` ``(x, y, visibility)`` in input pixels.
        map_size: ``(h, w)`` of the head's output.
        stride: input pixels per cell.

    Returns:
        ``keypoint_heatmap`` ``[B, K, h, w]``, ``keypoint_positive`` mask, and per instance (in
        the same order as :func:`encode_detection_targets`) ``displacement`` ``[M, K, 2]`` pixels
        from the instance anchor and ``keypoint_mask`` ``[M, K]``.
    """
    num_kpts = keypoints[0].shape[1] if keypoints else 0
    device = boxes[0].device if boxes else torch.device("cpu")
    heatmap = torch.zeros(len(boxes), num_kpts, *map_size, device=device)
    positive = torch.zeros_like(heatmap, dtype=torch.bool)
    disp, mask = [], []
    h, w = map_size
    for i, (img_boxes, img_kpts) in enumerate(zip(boxes, keypoints, strict=True)):
        keep = _valid_boxes(img_boxes)
        img_boxes, img_kpts = img_boxes[keep].float(), img_kpts[keep].float()
        geo = _instance_geometry(img_boxes, stride, map_size)
        cells = img_kpts[..., :2] / stride
        inside = (cells[..., 0] > -0.5) & (cells[..., 0] < w - 0.5)
        inside &= (cells[..., 1] > -0.5) & (cells[..., 1] < h - 0.5)
        labelled = (img_kpts[..., 2] > 0) & inside
        sigma = geo["sigma"].unsqueeze(1).expand_as(labelled)
        kpt_ids = torch.arange(num_kpts, device=device).expand_as(labelled)
        _, positive[i] = draw_gaussians(
            heatmap[i], cells[labelled], sigma[labelled], kpt_ids[labelled]
        )
        disp.append(img_kpts[..., :2] - geo["anchors"].unsqueeze(1))
        mask.append(labelled)
    return {
        "keypoint_heatmap": heatmap,
        "keypoint_positive": positive,
        "displacement": _cat(disp, device).reshape(-1, num_kpts, 2).float(),
        "keypoint_mask": _cat(mask, device).reshape(-1, num_kpts),
    }


def _cat(parts: list[Tensor], device: torch.device) -> Tensor:
    """Concatenate along dim 0; an empty list gives an empty float tensor."""
    return torch.cat(parts) if parts else torch.zeros(0, device=device)
