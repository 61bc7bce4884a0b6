"""Object detection: a timm backbone and a CenterNet head, decoded outside the network."""

from __future__ import annotations

from typing import Any, Literal, get_args

from torch import Tensor, nn
from torchmetrics import MetricCollection
from typing_extensions import override

from dense_lightning.metrics.detection import DetectionMAP
from dense_lightning.models.heads.centernet import CenterNetHead
from dense_lightning.ops import BOX_TERMS, box_loss_terms, decode_detections
from dense_lightning.tasks.centernet import CenterNetTask

__all__ = ["DETECTION_HEADS", "DetectionHeadName", "ObjectDetectionTask"]

DetectionHeadName = Literal["centernet"]
DETECTION_HEADS: tuple[str, ...] = get_args(DetectionHeadName)


class ObjectDetectionTask(CenterNetTask):
    """Anchor-free detection (CenterNet) with any timm CNN, trained dense or at its native stride.

    ``self.model`` is backbone + :class:`~dense_lightning.models.heads.CenterNetHead` and
    returns raw maps at feature resolution: ``heatmap`` logits, ``size`` (log pixels) and
    ``offset`` (pixels). See :class:`~dense_lightning.tasks.centernet.CenterNetTask` for the
    targets and decoding.

    Batches: ``{"image": [B, 3, H, W], "boxes": list of [N, 4] xyxy pixels, "labels": list of
    [N] int64, "image_id": [B]}``. Validation and test log COCO box ``map``, ``map_50`` and
    ``map_75``.

    Args:
        num_classes: object classes (no background class).
        head: the dense head; only ``"centernet"``.
        head_channels: hidden width of each head branch.
        heatmap_weight: weight of the focal loss on the centre heatmap.
        size_weight: weight of the L1 loss on log box size.
        offset_weight: weight of the L1 loss on the centre offset (in original strides).
        max_detections: peaks decoded per image.
        score_threshold: decoded detections below this score are dropped.
        nms_iou_threshold: IoU of the class-wise box NMS.
        backbone: see :class:`BaseTask` (also for the remaining arguments).
        **kwargs: the remaining :class:`BaseTask` arguments (``output_stride``, ``lr``...).
    """

    monitor = "val_map"
    mode = "max"
    loss_names = BOX_TERMS
    data_checks = ("num_classes",)

    def __init__(
        self,
        num_classes: int = 3,
        head: DetectionHeadName = "centernet",
        head_channels: int = 64,
        heatmap_weight: float = 1.0,
        size_weight: float = 1.0,
        offset_weight: float = 1.0,
        max_detections: int = 100,
        score_threshold: float = 0.01,
        nms_iou_threshold: float = 0.6,
        backbone: str = "resnet18",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone=backbone, **kwargs)

    @override
    def build_head(self, in_channels: int) -> nn.Module:
        hp = self.hparams
        return CenterNetHead(in_channels, hp.num_classes, hp.head_channels)

    @override
    def configure_losses(self) -> None:
        """Nothing to build: the loss is a sum of functional terms (``ops.centernet``)."""

    @override
    def make_metrics(self, **kwargs: Any) -> MetricCollection:
        return MetricCollection({"map": DetectionMAP(**kwargs)})

    @override
    def loss_terms(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        _, targets = self.centre_targets(outputs, batch)
        return box_loss_terms(outputs, targets, unit=self.original_stride())

    @override
    def decode(self, outputs: dict[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """Per-image ``boxes`` ``[N, 4]`` (xyxy, image coordinates), ``scores`` and ``labels``."""
        hp = self.hparams
        return decode_detections(
            outputs,
            self.geometry(images, outputs["heatmap"]),
            max_detections=hp.max_detections,
            score_threshold=hp.score_threshold,
            iou_threshold=hp.nms_iou_threshold,
            image_size=tuple(images.shape[-2:]),
        )
