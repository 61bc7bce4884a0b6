"""Semantic segmentation: a timm backbone, a local head, logits upsampled outside the model."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from typing_extensions import override

from dense_lightning.models import (
    SEGMENTATION_HEADS,
    BackboneWithHead,
    build_segmentation_head,
    create_backbone,
)
from dense_lightning.tasks.base import BaseTask

__all__ = ["SemanticSegmentationTask"]


class SemanticSegmentationTask(BaseTask):
    """Per-pixel classification with any timm CNN, trained dense or at its native stride.

    ``self.model`` maps images to logits at feature resolution (``H / output_stride``);
    :meth:`forward` upsamples them bilinearly to the image size, outside the convertible
    network, so the dense and the exported model share every layer.

    Batches are ``{"image": float [B, 3, H, W], "mask": int64 [B, H, W]}``.

    Args:
        num_classes: classes, background included.
        head: ``"fcn"`` (3x3 conv block + 1x1 classifier), ``"aspp"`` (atrous pyramid
            without image pooling) or ``"linear"`` (1x1 classifier).
        head_channels: hidden width of the head.
        dropout: channel dropout before the classifier.
        ignore_index: mask label excluded from loss and metrics (``None`` for none).
        class_weights: per-class cross-entropy weights, ``num_classes`` values.
        backbone: timm model name, e.g. ``"resnet50"``; any CNN with ``features_only``.
        **kwargs: the remaining :class:`BaseTask` arguments (``pretrained``,
            ``output_stride``, ``lr``, ``optimizer``, ``scheduler``...).
    """

    monitor = "val_miou"
    mode = "max"

    def __init__(
        self,
        num_classes: int = 4,
        head: Literal["fcn", "aspp", "linear"] = "fcn",
        head_channels: int = 128,
        dropout: float = 0.1,
        ignore_index: int | None = 255,
        class_weights: list[float] | None = None,
        backbone: str = "resnet18",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone=backbone, **kwargs)

    @override
    def check_hparams(self) -> None:
        super().check_hparams()
        hp = self.hparams
        if hp.num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2 (background included), got {hp.num_classes}"
            )
        if hp.head not in SEGMENTATION_HEADS:
            raise ValueError(f"Unknown head {hp.head!r}; choose one of {SEGMENTATION_HEADS}.")
        if hp.class_weights is not None and len(hp.class_weights) != hp.num_classes:
            raise ValueError(
                f"class_weights has {len(hp.class_weights)} values but num_classes is "
                f"{hp.num_classes}; give one weight per class."
            )

    @override
    def configure_models(self) -> None:
        hp = self.hparams
        backbone = create_backbone(
            hp.backbone, pretrained=hp.pretrained, checkpoint_path=hp.checkpoint_path
        )
        head = build_segmentation_head(
            hp.head,
            backbone.feature_info.channels()[-1],
            hp.num_classes,
            hp.head_channels,
            hp.dropout,
        )
        self.model = BackboneWithHead(backbone, head)

    @override
    def configure_losses(self) -> None:
        hp = self.hparams
        weight = None if hp.class_weights is None else torch.tensor(hp.class_weights)
        ignore = -100 if hp.ignore_index is None else hp.ignore_index  # -100: torch's "none"
        self.criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore)

    @override
    def make_metrics(self, **kwargs: Any) -> MetricCollection:
        hp = self.hparams
        common = {"num_classes": hp.num_classes, "ignore_index": hp.ignore_index, **kwargs}
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(average="macro", **common),
                "pixel_acc": MulticlassAccuracy(average="micro", **common),
            }
        )

    @override
    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``[B, num_classes, H, W]`` at the size of ``images``."""
        logits = self.model(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @override
    def compute_loss(self, outputs: Tensor, batch: dict[str, Any]) -> Tensor:
        return self.criterion(outputs, batch["mask"])

    @override
    def update_metrics(
        self, metrics: MetricCollection, outputs: Tensor, batch: dict[str, Any]
    ) -> None:
        metrics.update(outputs.argmax(dim=1), batch["mask"])

    @override
    def setup(self, stage: str) -> None:
        self.check_data(getattr(self._trainer, "datamodule", None), ("num_classes", "ignore_index"))

    @override
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        """Class maps ``int64 [B, H, W]``."""
        return self(batch["image"]).argmax(dim=1)
