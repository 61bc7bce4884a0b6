"""Target encoding for dense heads: Gaussian heatmaps, size, offset and keypoint targets.

Cells and pixels follow one :class:`~dense_lightning.equivalent.cells.CellGeometry`: cell ``j``
sits at pixel ``o + s * j``, with ``o`` shared by the dense and the original network, so one
set of weights means the same thing at both strides. Boxes and keypoints are continuous image
coordinates (pixel ``p`` covers ``[p, p + 1)``); regression targets are in those pixels (or log
pixels), never in cells.

Size and offset are regressed at every cell within ``reach`` pixels (per axis) of an object's
centre, not only at its peak cell. With ``reach`` half the original stride, the cells a dense
model regresses are the ``k x k`` cells that are each phase's nearest cell to the centre, so
every phase trains as the original network does on its view. The exported network's own cells
are trained by scoring the dense maps' lattice subsample with targets encoded for it (the
tasks' lattice term).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dense_lightning.equivalent.cells import CellGeometry

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


def _valid_boxes(boxes: Tensor) -> Tensor:
    """Mask of boxes with positive width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _cell_points(geometry: CellGeometry, map_size: tuple[int, int], device: torch.device) -> Tensor:
    """``[h, w, 2]`` image coordinates ``(x, y)`` of every cell of a map."""
    h, w = map_size
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return geometry.cells_to_points(torch.stack([xs, ys], dim=-1))


def _regression_cells(
    centres: Tensor, points: Tensor, peaks: list[tuple[Tensor, Tensor]], reach: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Cells that regress each instance: within ``reach`` of its centre, or one of its peaks.

    A cell near several centres regresses the nearest one, so every cell has one target.

    Args:
        centres: ``[N, 2]`` object centres ``(x, y)``.
        points: ``[h, w, 2]`` cell positions.
        peaks: ``(xs, ys)`` pairs of cells that must regress each instance (its peak cell).
        reach: half-width in pixels of the square around a centre.

    Returns:
        ``ys``, ``xs`` and ``instance`` (index into ``centres``) of every regression cell.
    """
    h, w, _ = points.shape
    diff = points.view(1, h, w, 2) - centres.view(-1, 1, 1, 2)  # [N, h, w, 2]
    near = (diff.abs() <= reach).all(dim=-1)
    for xs, ys in peaks:
        near[torch.arange(len(centres)), ys, xs] = True
    dist = torch.where(near, diff.norm(dim=-1), torch.inf)
    best = dist.argmin(dim=0)  # [h, w]
    owned = near.gather(0, best.unsqueeze(0)).squeeze(0)
    ys, xs = owned.nonzero(as_tuple=True)
    return ys, xs, best[ys, xs]


def encode_detection_targets(
    boxes: list[Tensor],
    labels: list[Tensor],
    num_classes: int,
    map_size: tuple[int, int],
    geometry: CellGeometry,
    reach: float | None = None,
) -> dict[str, Tensor]:
    """Encode boxes as CenterNet targets for a map of ``map_size`` cells with ``geometry``.

    Args:
        boxes: per image ``[N, 4]`` boxes, ``xyxy`` in image coordinates.
        labels: per image ``[N]`` int64 class indices.
        num_classes: number of heatmap channels.
        map_size: ``(h, w)`` of the head's output.
        geometry: where the map's cells sit (its stride is the map's stride).
        reach: cells within this many pixels of a centre (per axis) regress its size and
            offset, as does the peak cell (clamped to the map, so possibly beyond ``reach`` at
            the border); ``None`` regresses at the peak cell only.

    Returns:
        ``heatmap`` ``[B, C, h, w]``, ``positive`` mask of the same shape, and per regression
        cell (flattened over the batch) ``batch``, ``ys``, ``xs``, ``instance`` (index into the
        batch's valid boxes, in order), ``size`` (log pixels) and ``offset`` (pixels from the
        cell's position to the centre) targets.
    """
    device = boxes[0].device if boxes else torch.device("cpu")
    heatmap = torch.zeros(len(boxes), num_classes, *map_size, device=device)
    positive = torch.zeros_like(heatmap, dtype=torch.bool)
    points = _cell_points(geometry, map_size, device)
    rows: dict[str, list[Tensor]] = {k: [] for k in ("batch", "ys", "xs", "instance")}
    rows.update(size=[], offset=[])
    seen = 0
    for i, (img_boxes, img_labels) in enumerate(zip(boxes, labels, strict=True)):
        keep = _valid_boxes(img_boxes)
        img_boxes, img_labels = img_boxes[keep].float(), img_labels[keep].long()
        centres = (img_boxes[:, :2] + img_boxes[:, 2:]) / 2
        sizes = (img_boxes[:, 2:] - img_boxes[:, :2]).clamp(min=1.0)
        stride_y, stride_x = geometry.stride
        radius = gaussian_radius(sizes[:, 1] / stride_y, sizes[:, 0] / stride_x)
        cells = geometry.points_to_cells(centres)
        _, positive[i] = draw_gaussians(heatmap[i], cells, (2 * radius + 1) / 6, img_labels)
        if len(centres):
            peaks = [geometry.nearest_cells(centres, map_size)]
            half = 0.0 if reach is None else reach
            ys, xs, inst = _regression_cells(centres, points, peaks, half)
            rows["batch"].append(torch.full_like(ys, i))
            rows["ys"].append(ys)
            rows["xs"].append(xs)
            rows["instance"].append(inst + seen)
            rows["size"].append(sizes[inst].log())
            rows["offset"].append(centres[inst] - points[ys, xs])
        seen += len(centres)
    out = {key: _cat(parts, device) for key, parts in rows.items()}
    for key in ("batch", "ys", "xs", "instance"):
        out[key] = out[key].long()
    out["size"] = out["size"].reshape(-1, 2).float()
    out["offset"] = out["offset"].reshape(-1, 2).float()
    return {"heatmap": heatmap, "positive": positive, **out}


def encode_keypoint_targets(
    boxes: list[Tensor],
    keypoints: list[Tensor],
    map_size: tuple[int, int],
    geometry: CellGeometry,
    centres: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Encode per-instance keypoints as heatmaps and displacements from the regression cells.

    Keypoints with visibility 0 (not labelled, COCO) or outside the map get no Gaussian and are
    masked out of the displacement loss. Each keypoint's Gaussian uses its instance's box radius,
    so the target scales with the object and not with the stride.

    Args:
        boxes: per image ``[N, 4]`` boxes, ``xyxy`` in image coordinates.
        keypoints: per image ``[N, K, 3]`` ``(x, y, visibility)`` in image coordinates.
        map_size: ``(h, w)`` of the head's output.
        geometry: where the map's cells sit.
        centres: :func:`encode_detection_targets` of the same boxes: its regression cells
            also regress the keypoints.

    Returns:
        ``keypoint_heatmap`` ``[B, K, h, w]``, ``keypoint_positive`` mask, and per regression
        cell of ``centres`` ``displacement`` ``[M, K, 2]`` (pixels from the cell's position)
        and ``keypoint_mask`` ``[M, K]``.
    """
    num_kpts = keypoints[0].shape[1] if keypoints else 0
    device = boxes[0].device if boxes else torch.device("cpu")
    heatmap = torch.zeros(len(boxes), num_kpts, *map_size, device=device)
    positive = torch.zeros_like(heatmap, dtype=torch.bool)
    h, w = map_size
    kept, labelled_all = [], []
    for i, (img_boxes, img_kpts) in enumerate(zip(boxes, keypoints, strict=True)):
        img_kpts = img_kpts[_valid_boxes(img_boxes)].float()
        cells = geometry.points_to_cells(img_kpts[..., :2])
        inside = (cells[..., 0] > -0.5) & (cells[..., 0] < w - 0.5)
        inside &= (cells[..., 1] > -0.5) & (cells[..., 1] < h - 0.5)
        labelled = (img_kpts[..., 2] > 0) & inside
        img_boxes = img_boxes[_valid_boxes(img_boxes)].float()
        sizes = (img_boxes[:, 2:] - img_boxes[:, :2]).clamp(min=1.0)
        radius = gaussian_radius(sizes[:, 1] / geometry.stride[0], sizes[:, 0] / geometry.stride[1])
        sigma = ((2 * radius + 1) / 6).unsqueeze(1).expand_as(labelled)
        kpt_ids = torch.arange(num_kpts, device=device).expand_as(labelled)
        _, positive[i] = draw_gaussians(
            heatmap[i], cells[labelled], sigma[labelled], kpt_ids[labelled]
        )
        kept.append(img_kpts[..., :2])
        labelled_all.append(labelled)
    flat = _cat(kept, device).reshape(-1, num_kpts, 2)
    mask = _cat(labelled_all, device).reshape(-1, num_kpts).bool()
    points = _cell_points(geometry, map_size, device)[centres["ys"], centres["xs"]]
    instance = centres["instance"]
    return {
        "keypoint_heatmap": heatmap,
        "keypoint_positive": positive,
        "displacement": (flat[instance] - points.unsqueeze(1)).float(),
        "keypoint_mask": mask[instance],
    }


def _cat(parts: list[Tensor], device: torch.device) -> Tensor:
    """Concatenate along dim 0; an empty list gives an empty float tensor."""
    return torch.cat(parts) if parts else torch.zeros(0, device=device)
