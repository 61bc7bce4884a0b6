"""Decoding of CenterNet-style pose outputs into per-instance keypoints.

Each detected centre regresses all its keypoints (the grouping); each regressed keypoint then
snaps to the nearest confident peak of that keypoint's heatmap inside the instance's box (the
precision), located to a sub-cell by :func:`~dense_lightning.ops.decoding.refine_peaks`. This is
the decoding of CenterNet's multi-person pose model (Zhou et al., 2019).
"""

import torch
from torch import Tensor

from dense_lightning.equivalent.cells import CellGeometry
from dense_lightning.ops.decoding import (
    RefineMethod,
    decode_centres,
    gather_peaks,
    heatmap_nms,
    nms_keep,
    refine_peaks,
    topk_peaks,
)

__all__ = ["decode_keypoints"]

# CenterNet accepts a heatmap peak only this close to the regressed point, relative to box size.
_SNAP_DISTANCE = 0.3


def _heatmap_candidates(
    heat: Tensor, geometry: CellGeometry, max_candidates: int, refine: RefineMethod
) -> tuple[Tensor, Tensor]:
    """Refined peaks per keypoint channel: positions ``[B, K, m, 2]``, scores ``[B, K, m]``."""
    peaks = topk_peaks(heatmap_nms(heat), max_candidates, per_channel=True)
    dx, dy = refine_peaks(heat, peaks["channels"], peaks["ys"], peaks["xs"], refine)
    cells = torch.stack([peaks["xs"] + dx, peaks["ys"] + dy], dim=-1)
    return geometry.cells_to_points(cells), peaks["scores"]


def _snap(
    regressed: Tensor, cand_xy: Tensor, cand_scores: Tensor, boxes: Tensor, threshold: float
) -> tuple[Tensor, Tensor]:
    """Replace regressed keypoints by the nearest valid heatmap peak.

    Args:
        regressed: ``[B, N, K, 2]`` keypoints from the centre displacements.
        cand_xy: ``[B, K, m, 2]`` heatmap peaks.
        cand_scores: ``[B, K, m]`` their scores.
        boxes: ``[B, N, 4]`` instance boxes.
        threshold: minimum peak score.

    Returns:
        Positions ``[B, N, K, 2]`` and a mask ``[B, N, K]`` of the snapped keypoints, with the
        snapped peak's score in the mask's place (zero when not snapped).
    """
    dist = (regressed.unsqueeze(3) - cand_xy.unsqueeze(1)).norm(dim=-1)  # [B, N, K, m]
    box = boxes.view(*boxes.shape[:2], 1, 1, 4)
    cx, cy = cand_xy[..., 0].unsqueeze(1), cand_xy[..., 1].unsqueeze(1)
    inside = (cx >= box[..., 0]) & (cx <= box[..., 2]) & (cy >= box[..., 1]) & (cy <= box[..., 3])
    side = (boxes[..., 2:] - boxes[..., :2]).amax(-1).view(*boxes.shape[:2], 1, 1)
    valid = inside & (cand_scores.unsqueeze(1) >= threshold) & (dist <= _SNAP_DISTANCE * side)
    best_dist, best = torch.where(valid, dist, torch.inf).min(dim=-1)  # [B, N, K]
    found = torch.isfinite(best_dist)
    expand = cand_xy.unsqueeze(1).expand(*dist.shape, 2)
    snapped = expand.gather(3, best[..., None, None].expand(*best.shape, 1, 2)).squeeze(3)
    scores = cand_scores.unsqueeze(1).expand_as(dist).gather(3, best.unsqueeze(-1)).squeeze(-1)
    xy = torch.where(found.unsqueeze(-1), snapped, regressed)
    return xy, torch.where(found, scores, torch.zeros_like(scores))


def _score_at(heat: Tensor, xy: Tensor, geometry: CellGeometry) -> Tensor:
    """Heatmap score ``[B, N, K]`` at the cells nearest to keypoints ``xy`` (``[B, N, K, 2]``)."""
    b, k, h, w = heat.shape
    xs, ys = geometry.nearest_cells(xy, (h, w))
    batch = torch.arange(b, device=heat.device).view(-1, 1, 1)
    kpt = torch.arange(k, device=heat.device).view(1, 1, -1)
    return heat[batch, kpt, ys, xs]


def decode_keypoints(
    outputs: dict[str, Tensor],
    geometry: CellGeometry,
    max_detections: int = 20,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.6,
    keypoint_threshold: float = 0.1,
    refine: RefineMethod = "quarter",
) -> list[dict[str, Tensor]]:
    """Decode pose outputs into instances with boxes and keypoints.

    Args:
        outputs: raw head outputs: ``heatmap``/``size``/``offset`` for instance centres,
            ``keypoint_heatmap`` ``[B, K, h, w]`` logits and ``displacement`` ``[B, 2K, h, w]``.
        geometry: where the maps' cells sit.
        max_detections: centres considered per image.
        score_threshold: drop instances whose centre scores below this.
        iou_threshold: box NMS threshold between instances.
        keypoint_threshold: minimum heatmap score for a peak to replace a regressed keypoint.
        refine: sub-cell refinement of heatmap peaks.

    Returns:
        One dict per image: ``boxes`` ``[N, 4]``, ``scores``, ``labels`` and ``keypoints``
        ``[N, K, 3]`` as ``(x, y, score)`` in image coordinates.
    """
    dec = decode_centres(outputs, geometry, max_detections)
    heat = outputs["keypoint_heatmap"].float().sigmoid()
    b, k = dec["scores"].shape
    num_kpts = heat.shape[1]
    disp = gather_peaks(outputs["displacement"].float(), dec["ys"], dec["xs"])
    regressed = dec["anchors"].unsqueeze(2) + disp.view(b, k, num_kpts, 2)
    cand_xy, cand_scores = _heatmap_candidates(heat, geometry, max_detections, refine)
    xy, snapped_scores = _snap(regressed, cand_xy, cand_scores, dec["boxes"], keypoint_threshold)
    kpt_scores = torch.maximum(snapped_scores, _score_at(heat, xy, geometry))
    keypoints = torch.cat([xy, kpt_scores.unsqueeze(-1)], dim=-1)
    results = []
    for i in range(b):
        keep = nms_keep(
            dec["boxes"][i], dec["scores"][i], dec["labels"][i], score_threshold, iou_threshold
        )
        results.append(
            {
                "boxes": dec["boxes"][i][keep],
                "scores": dec["scores"][i][keep],
                "labels": dec["labels"][i][keep],
                "keypoints": keypoints[i][keep],
            }
        )
    return results
