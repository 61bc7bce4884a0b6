"""What detection and keypoint estimation share: CenterNet centres, their metrics and outputs."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from torch import Tensor
from torchmetrics import MetricCollection
from typing_extensions import override

from dense_lightning.equivalent.cells import CellGeometry
from dense_lightning.errors import ConfigurationError
from dense_lightning.ops import encode_detection_targets
from dense_lightning.tasks.base import BaseTask

__all__ = ["CenterNetTask"]


class CenterNetTask(BaseTask):
    """Base of the CenterNet tasks: instance centres on a heatmap, boxes regressed around them.

    ``self.model`` returns raw maps at feature resolution, at least ``heatmap`` logits,
    ``size`` (log pixels) and ``offset`` (pixels from each cell's position to the centre).
    Targets are encoded with the geometry of the maps they score, so the same task trains a
    dense model (``k x k`` more cells), the original one, or the dense maps' lattice subsample
    (the exported model's maps, see ``lattice_loss_weight``). Size and offset are regressed at
    every cell within half an original stride of a centre: on the dense map these are the
    ``k x k`` cells that are each phase's nearest cell, so every phase trains as the original
    network on its view; on the original map it is the peak cell. Decoding (3x3 max-pool
    peaks, top-k, class-wise box NMS) happens outside ``self.model``.

    Subclasses give the head, the loss terms and :meth:`decode`; the hyperparameters
    ``num_classes``, ``head_channels``, ``max_detections``, ``score_threshold`` and
    ``nms_iou_threshold`` are read from ``hparams``. Validation and test compute the metrics;
    training logs the loss terms only (decoding and COCO evaluation per training step would
    cost more than the step).
    """

    train_metrics_enabled = False

    @override
    def check_hparams(self) -> None:
        super().check_hparams()
        hp = self.hparams
        if hp.num_classes < 1 or hp.head_channels < 1 or hp.max_detections < 1:
            raise ConfigurationError(
                "num_classes, head_channels and max_detections must be >= 1; got "
                f"{hp.num_classes}, {hp.head_channels}, {hp.max_detections}."
            )
        for name in ("score_threshold", "nms_iou_threshold"):
            if not 0.0 <= hp[name] <= 1.0:
                raise ConfigurationError(f"{name} must be in [0, 1], got {hp[name]}.")

    def centre_targets(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[CellGeometry, dict[str, Tensor]]:
        """Geometry of the output maps and the centre targets encoded for them."""
        heat = outputs["heatmap"]
        geometry = self.geometry(batch["image"], heat)
        targets = encode_detection_targets(
            batch["boxes"],
            batch["labels"],
            heat.shape[1],
            tuple(heat.shape[-2:]),
            geometry,
            reach=self.original_stride() / 2,
        )
        return geometry, targets

    @abstractmethod
    def decode(self, outputs: dict[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """Per-image predictions (``boxes``, ``scores``, ``labels``...) in image coordinates."""

    @staticmethod
    def targets_of(batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """Per-image ground truth in the metrics' format, with ``image_id`` when present."""
        keys = [k for k in ("boxes", "labels", "keypoints") if k in batch]
        targets = [{k: batch[k][i] for k in keys} for i in range(len(batch["boxes"]))]
        if "image_id" in batch:
            for target, image_id in zip(targets, batch["image_id"], strict=True):
                target["image_id"] = image_id
        return targets

    @override
    def update_metrics(
        self, metrics: MetricCollection, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> None:
        metrics.update(self.decode(outputs, batch["image"]), self.targets_of(batch))

    def rescale(self, result: dict[str, Tensor], scale: Tensor) -> None:
        """Add ``orig_*`` entries in the original image's pixels (``x / sx``, ``y / sy``)."""
        result["orig_boxes"] = result["boxes"] / scale.repeat(2)

    @override
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Tensor]]:
        """Per-image predictions (see :meth:`decode`) with ``image_id``.

        When the batch has ``scale`` (the COCO and synthetic modules do), :meth:`rescale`
        adds the predictions in the original image's pixels.
        """
        images = batch["image"]
        results = self.decode(self(images), images)
        for i, result in enumerate(results):
            if "image_id" in batch:
                result["image_id"] = batch["image_id"][i]
            if "scale" in batch:
                self.rescale(result, batch["scale"][i])
        return results
