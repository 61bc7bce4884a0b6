"""Object detection: a timm backbone and a CenterNet head, decoded outside the network."""

from typing import Any, Literal

from torch import Tensor
from torchmetrics import MetricCollection
from typing_extensions import override

from dense_lightning.metrics.detection import DetectionMAP
from dense_lightning.models import BackboneWithHead, create_backbone
from dense_lightning.models.heads.centernet import CenterNetHead
from dense_lightning.ops import (
    decode_detections,
    encode_detection_targets,
    gather_cells,
    heatmap_focal_loss,
    infer_stride,
    masked_l1_loss,
)
from dense_lightning.tasks.base import BaseTask, Stage

__all__ = ["DETECTION_HEADS", "ObjectDetectionTask"]

DETECTION_HEADS: tuple[str, ...] = ("centernet",)


class ObjectDetectionTask(BaseTask):
    """Anchor-free detection (CenterNet) with any timm CNN, trained dense or at its native stride.

    ``self.model`` is backbone + :class:`~dense_lightning.models.heads.CenterNetHead` and
    returns raw maps at feature resolution: ``heatmap`` logits, ``size`` (log pixels) and
    ``offset`` (pixels). Targets are encoded at the stride the model actually has, read off the
    input and heatmap sizes, so the same task trains a dense model (``k x k`` more heatmap
    cells) or the original one. Decoding (3x3 max-pool peaks, top-k, class-wise box NMS) and
    the loss happen outside ``self.model``.

    Batches: ``{"image": [B, 3, H, W], "boxes": list of [N, 4] xyxy pixels, "labels": list of
    [N] int64, "image_id": [B]}``. Validation and test log COCO box ``map``, ``map_50`` and
    ``map_75``; training logs the loss terms only (decoding and COCO evaluation per training
    step would cost more than the step).

    Args:
        num_classes: object classes (no background class).
        head: the dense head; only ``"centernet"``.
        head_channels: hidden width of each head branch.
        heatmap_weight: weight of the focal loss on the centre heatmap.
        size_weight: weight of the L1 loss on log box size.
        offset_weight: weight of the L1 loss on the centre offset (in cells).
        max_detections: peaks decoded per image.
        score_threshold: decoded detections below this score are dropped.
        nms_iou_threshold: IoU of the class-wise box NMS.
        backbone: see :class:`BaseTask` (also for the remaining arguments).
        **kwargs: the remaining :class:`BaseTask` arguments (``output_stride``, ``lr``...).
    """

    monitor = "val_map"
    mode = "max"
    #: Values the ``head`` argument accepts.
    heads: tuple[str, ...] = DETECTION_HEADS
    #: Names of the loss terms, logged as ``{stage}_loss_{name}``.
    loss_names: tuple[str, ...] = ("heatmap", "size", "offset")

    def __init__(
        self,
        num_classes: int = 3,
        head: Literal["centernet"] = "centernet",
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
    def check_hparams(self) -> None:
        super().check_hparams()
        hp = self.hparams
        if hp.head not in self.heads:
            raise ValueError(f"Unknown head {hp.head!r}; choose one of {self.heads}.")
        if hp.num_classes < 1 or hp.head_channels < 1 or hp.max_detections < 1:
            raise ValueError(
                "num_classes, head_channels and max_detections must be >= 1; got "
                f"{hp.num_classes}, {hp.head_channels}, {hp.max_detections}."
            )
        weights = {name: hp[f"{name}_weight"] for name in self.loss_names}
        if min(weights.values()) < 0:
            raise ValueError(f"Loss weights must be >= 0, got {weights}.")
        for name in ("score_threshold", "nms_iou_threshold"):
            if not 0.0 <= hp[name] <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {hp[name]}.")

    def feature_channels(self, backbone: Any) -> int:
        """Channels of the deepest feature map, which the head reads."""
        return backbone.feature_info.channels()[-1]

    @override
    def configure_models(self) -> None:
        hp = self.hparams
        backbone = create_backbone(
            hp.backbone, pretrained=hp.pretrained, checkpoint_path=hp.checkpoint_path
        )
        head = CenterNetHead(self.feature_channels(backbone), hp.num_classes, hp.head_channels)
        self.model = BackboneWithHead(backbone, head)

    @override
    def configure_losses(self) -> None:
        # The loss is a sum of functional terms (ops.losses); nothing to build.
        self.loss_weights = {name: self.hparams[f"{name}_weight"] for name in self.loss_names}

    @override
    def make_metrics(self, **kwargs: Any) -> MetricCollection:
        return MetricCollection({"map": DetectionMAP(**kwargs)})

    @override
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Raw head outputs at feature resolution (see the class docstring)."""
        return self.model(images)

    @staticmethod
    def stride_of(outputs: dict[str, Tensor], images: Tensor) -> int:
        """The stride of the model's maps for these ``images``, dense or original."""
        return infer_stride(tuple(images.shape[-2:]), tuple(outputs["heatmap"].shape[-2:]))

    def loss_terms(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Unweighted loss terms, keyed by :attr:`loss_names`."""
        terms, _ = self.centre_loss_terms(outputs, batch, self.stride_of(outputs, batch["image"]))
        return terms

    def centre_loss_terms(
        self, outputs: dict[str, Tensor], batch: dict[str, Any], stride: int
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Heatmap, size and offset losses, and the encoded targets they were computed from."""
        heat = outputs["heatmap"]
        t = encode_detection_targets(
            batch["boxes"], batch["labels"], heat.shape[1], tuple(heat.shape[-2:]), stride
        )
        cells = (t["batch"], t["ys"], t["xs"])
        terms = {
            "heatmap": heatmap_focal_loss(heat, t["heatmap"], t["positive"]),
            "size": masked_l1_loss(gather_cells(outputs["size"], *cells), t["size"]),
            # Offsets are pixels in the model but the loss is in cells, so its scale (and the
            # balance with the other terms) does not change with the stride.
            "offset": masked_l1_loss(
                gather_cells(outputs["offset"], *cells) / stride, t["offset"] / stride
            ),
        }
        return terms, t

    def weighted_loss(self, terms: dict[str, Tensor]) -> Tensor:
        """The training loss: the loss terms weighted by their ``*_weight`` hyperparameters."""
        return sum(self.loss_weights[name] * value for name, value in terms.items())

    @override
    def compute_loss(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> Tensor:
        return self.weighted_loss(self.loss_terms(outputs, batch))

    def decode(self, outputs: dict[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """Per-image ``boxes`` ``[N, 4]`` (xyxy, input pixels), ``scores`` and ``labels``."""
        hp = self.hparams
        return decode_detections(
            outputs,
            self.stride_of(outputs, images),
            max_detections=hp.max_detections,
            score_threshold=hp.score_threshold,
            iou_threshold=hp.nms_iou_threshold,
            image_size=tuple(images.shape[-2:]),
        )

    @staticmethod
    def targets_of(batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """Per-image ground truth in the metrics' format."""
        keys = [k for k in ("boxes", "labels", "keypoints") if k in batch]
        return [{k: batch[k][i] for k in keys} for i in range(len(batch["boxes"]))]

    @override
    def update_metrics(
        self, metrics: MetricCollection, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> None:
        targets = self.targets_of(batch)
        if "image_id" in batch:
            for target, image_id in zip(targets, batch["image_id"], strict=True):
                target["image_id"] = image_id
        outputs = {name: value.detach() for name, value in outputs.items()}
        metrics.update(self.decode(outputs, batch["image"]), targets)

    @override
    def _shared_step(self, batch: dict[str, Any], stage: Stage) -> Tensor:
        images = batch["image"]
        outputs = self(images)
        terms = self.loss_terms(outputs, batch)
        loss = self.weighted_loss(terms)
        on_step = stage == "train"
        kwargs = {"batch_size": images.shape[0], "sync_dist": not on_step, "on_epoch": True}
        self.log(f"{stage}_loss", loss, on_step=on_step, prog_bar=True, **kwargs)
        terms = {f"{stage}_loss_{name}": value.detach() for name, value in terms.items()}
        self.log_dict(terms, on_step=on_step, **kwargs)
        if stage != "train":
            self.update_metrics(getattr(self, f"{stage}_metrics"), outputs, batch)
        return loss

    def _log_epoch_metrics(self, stage: Stage) -> None:
        """Compute (synced over ranks by torchmetrics), log and reset a stage's metrics."""
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        if any(metric.update_called for metric in metrics.values()):
            values = {name: value.to(self.device) for name, value in metrics.compute().items()}
            # compute() already gathered every rank's instances: the values agree on all ranks.
            self.log_dict(values, prog_bar=True)
        metrics.reset()

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    @override
    def setup(self, stage: str) -> None:
        # Catch a data/model mismatch here rather than as an index error inside the loss.
        self.check_data(getattr(self._trainer, "datamodule", None), ("num_classes",))

    @override
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Tensor]]:
        """Per-image detections (see :meth:`decode`) with ``image_id``.

        When the batch has ``scale`` (the COCO and synthetic modules do), ``orig_boxes`` are
        the boxes in the original image's pixels (``x / sx``, ``y / sy``).
        """
        images = batch["image"]
        results = self.decode(self(images), images)
        for i, result in enumerate(results):
            if "image_id" in batch:
                result["image_id"] = batch["image_id"][i]
            if "scale" in batch:
                result["orig_boxes"] = result["boxes"] / batch["scale"][i].repeat(2)
        return results
