"""Task heads made only of local layers (no global pooling, no interpolation)."""

from dense_lightning.models.heads.segmentation import (
    SEGMENTATION_HEADS,
    ASPPHead,
    FCNHead,
    LinearHead,
    SegmentationHeadName,
    build_segmentation_head,
)

__all__ = [
    "SEGMENTATION_HEADS",
    "ASPPHead",
    "FCNHead",
    "LinearHead",
    "SegmentationHeadName",
    "build_segmentation_head",
]
