"""Keypoint metrics as torchmetrics Metrics: PCK and COCO keypoint AP (OKS)."""

from dense_lightning.metrics.keypoint_ap import (
    COCO_KEYPOINT_SIGMAS,
    DEFAULT_KEYPOINT_SIGMA,
    KeypointAP,
    keypoint_sigmas,
)
from dense_lightning.metrics.pck import PCK, greedy_match

__all__ = [
    "COCO_KEYPOINT_SIGMAS",
    "DEFAULT_KEYPOINT_SIGMA",
    "PCK",
    "KeypointAP",
    "greedy_match",
    "keypoint_sigmas",
]
