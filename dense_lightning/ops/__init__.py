"""Target encoding, losses and decoding for dense detection and keypoint heads."""

from dense_lightning.ops.centernet import (
    BOX_TERMS,
    POSE_TERMS,
    box_loss_terms,
    pose_loss_terms,
)
from dense_lightning.ops.decoding import (
    decode_centres,
    decode_detections,
    heatmap_nms,
    refine_peaks,
    topk_peaks,
)
from dense_lightning.ops.encoding import (
    draw_gaussians,
    encode_detection_targets,
    encode_keypoint_targets,
    gaussian_radius,
    infer_stride,
)
from dense_lightning.ops.losses import gather_cells, heatmap_focal_loss, masked_l1_loss
from dense_lightning.ops.pose import decode_keypoints

__all__ = [
    "BOX_TERMS",
    "POSE_TERMS",
    "box_loss_terms",
    "decode_centres",
    "decode_detections",
    "decode_keypoints",
    "draw_gaussians",
    "encode_detection_targets",
    "encode_keypoint_targets",
    "gather_cells",
    "gaussian_radius",
    "heatmap_focal_loss",
    "heatmap_nms",
    "infer_stride",
    "masked_l1_loss",
    "pose_loss_terms",
    "refine_peaks",
    "topk_peaks",
]
