"""Convertible networks: timm feature backbones and heads made of local layers."""

from dense_lightning.equivalent.cells import eval_mode
from dense_lightning.models.backbone import (
    BackboneWithHead,
    check_backbone_name,
    create_backbone,
    timm_state_dict,
)
from dense_lightning.models.dense_state import (
    DENSE_STATE_KEY,
    apply_dense_state,
    dense_state,
    make_dense,
)
from dense_lightning.models.heads import (
    SEGMENTATION_HEADS,
    ASPPHead,
    FCNHead,
    LinearHead,
    SegmentationHeadName,
    build_segmentation_head,
)
from dense_lightning.models.heads.centernet import CenterNetHead
from dense_lightning.models.heads.heatmap import HeatmapHead, PoseHead

__all__ = [
    "DENSE_STATE_KEY",
    "SEGMENTATION_HEADS",
    "ASPPHead",
    "BackboneWithHead",
    "CenterNetHead",
    "FCNHead",
    "HeatmapHead",
    "LinearHead",
    "PoseHead",
    "SegmentationHeadName",
    "apply_dense_state",
    "build_segmentation_head",
    "check_backbone_name",
    "create_backbone",
    "dense_state",
    "eval_mode",
    "make_dense",
    "timm_state_dict",
]
