"""CenterNet's losses: the box terms (centre heatmap, size, offset) and the pose terms.

Targets come from :mod:`dense_lightning.ops.encoding`; the terms are returned unweighted and
keyed by name, so a task weights and logs them without knowing how they are computed.
"""

from __future__ import annotations

from torch import Tensor

from dense_lightning.ops.losses import gather_cells, heatmap_focal_loss, masked_l1_loss

__all__ = ["BOX_TERMS", "POSE_TERMS", "box_loss_terms", "pose_loss_terms"]

#: Names of :func:`box_loss_terms`' terms.
BOX_TERMS: tuple[str, ...] = ("heatmap", "size", "offset")
#: Names of :func:`pose_loss_terms`' terms.
POSE_TERMS: tuple[str, ...] = ("keypoint_heatmap", "displacement")


def box_loss_terms(
    outputs: dict[str, Tensor], targets: dict[str, Tensor], unit: float
) -> dict[str, Tensor]:
    """Focal loss on the centre heatmap, L1 on log size and offset at the regression cells.

    Args:
        outputs: ``heatmap`` logits, ``size`` (log pixels) and ``offset`` (pixels) maps.
        targets: :func:`~dense_lightning.ops.encode_detection_targets` for those maps.
        unit: pixels per unit of the offset loss. The original stride keeps the term's scale
            (and its balance with the others) the same whether the model trains dense or not.

    Returns:
        Unweighted ``heatmap``, ``size`` and ``offset`` terms.
    """
    cells = (targets["batch"], targets["ys"], targets["xs"])
    return {
        "heatmap": heatmap_focal_loss(outputs["heatmap"], targets["heatmap"], targets["positive"]),
        "size": masked_l1_loss(gather_cells(outputs["size"], *cells), targets["size"]),
        "offset": masked_l1_loss(
            gather_cells(outputs["offset"], *cells) / unit, targets["offset"] / unit
        ),
    }


def pose_loss_terms(
    outputs: dict[str, Tensor],
    centres: dict[str, Tensor],
    keypoints: dict[str, Tensor],
    unit: float,
) -> dict[str, Tensor]:
    """Focal loss on keypoint heatmaps, L1 on displacements at the regression cells.

    Args:
        outputs: ``keypoint_heatmap`` logits ``[B, K, h, w]`` and ``displacement``
            ``[B, 2K, h, w]`` (pixels from each cell's position).
        centres: :func:`~dense_lightning.ops.encode_detection_targets` (regression cells).
        keypoints: :func:`~dense_lightning.ops.encode_keypoint_targets` for the same cells.
        unit: pixels per unit of the displacement loss (see :func:`box_loss_terms`).

    Returns:
        Unweighted ``keypoint_heatmap`` and ``displacement`` terms.
    """
    heat = outputs["keypoint_heatmap"]
    cells = (centres["batch"], centres["ys"], centres["xs"])
    pred = gather_cells(outputs["displacement"], *cells).view(-1, heat.shape[1], 2)
    return {
        "keypoint_heatmap": heatmap_focal_loss(
            heat, keypoints["keypoint_heatmap"], keypoints["keypoint_positive"]
        ),
        "displacement": masked_l1_loss(
            pred / unit, keypoints["displacement"] / unit, keypoints["keypoint_mask"]
        ),
    }
