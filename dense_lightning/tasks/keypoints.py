"""Multi-person keypoint estimation: CenterNet's pose model on any timm CNN.

Why bottom-up with centre grouping rather than top-down: both the synthetic data and COCO have
several instances per image, and a top-down model needs boxes and crops (RoI resampling), which
would put a non-local step inside the network. CenterNet's pose model stays one fully local
network, so the dense conversion covers all of it, and one pass gives every instance.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from torch import Tensor, nn
from torchmetrics import MetricCollection
from typing_extensions import override

from dense_lightning.errors import ConfigurationError
from dense_lightning.metrics import PCK, KeypointAP, keypoint_sigmas
from dense_lightning.models.heads.heatmap import PoseHead
from dense_lightning.ops import (
    BOX_TERMS,
    POSE_TERMS,
    box_loss_terms,
    decode_keypoints,
    encode_keypoint_targets,
    pose_loss_terms,
)
from dense_lightning.ops.decoding import RefineMethod
from dense_lightning.tasks.centernet import CenterNetTask

__all__ = ["KEYPOINT_HEADS", "KeypointEstimationTask", "KeypointHeadName"]

KeypointHeadName = Literal["centernet"]
KEYPOINT_HEADS: tuple[str, ...] = get_args(KeypointHeadName)


class KeypointEstimationTask(CenterNetTask):
    """Keypoints of every instance, trained dense or at the backbone's native stride.

    ``self.model`` is backbone + :class:`~dense_lightning.models.heads.PoseHead`: the
    CenterNet maps for instance centres (as in :class:`ObjectDetectionTask`) plus one heatmap
    per keypoint and each keypoint's displacement (pixels) from the cell's position, regressed
    at the same cells as the box offsets. Decoding regresses the
    keypoints of each detected centre and snaps each to the nearest confident heatmap peak in
    the instance's box, refined to a sub-cell (``refine``). Unlabelled keypoints (visibility 0)
    get no heatmap target and no displacement loss; visibility 1 (labelled, occluded) and 2
    both count, as in COCO.

    Batches: the detection batch plus ``"keypoints"``: list of ``[N, K, 3]`` ``(x, y, v)``.
    Validation and test log COCO keypoint AP through OKS (``keypoint_ap``, ``keypoint_ap_50``,
    ``keypoint_ap_75``, ``keypoint_ar``; pycocotools, with the box area as the OKS scale) and
    ``pck`` (threshold relative to the longer box side).

    Args:
        num_keypoints: keypoints per instance ``K`` (must match the data).
        num_classes: instance classes (1: people).
        head: the dense head; only ``"centernet"`` (CenterNet pose).
        head_channels: hidden width of each head branch.
        heatmap_weight: weight of the focal loss on the centre heatmap.
        size_weight: weight of the L1 loss on log box size.
        offset_weight: weight of the L1 loss on the centre offset (in original strides).
        keypoint_heatmap_weight: weight of the focal loss on keypoint heatmaps.
        displacement_weight: weight of the L1 loss on displacements (in original strides).
        keypoint_threshold: heatmap score a peak needs to replace a regressed keypoint.
        refine: sub-cell refinement of heatmap peaks: ``"quarter"`` (a quarter cell toward
            the higher neighbour), ``"soft_argmax"`` (3x3 centroid) or ``"none"``.
        oks_sigmas: per-keypoint OKS sigmas; default COCO's for 17 keypoints, else uniform.
        pck_threshold: PCK distance threshold as a fraction of the box size.
        max_detections: instances decoded per image (COCO keypoint AP counts 20).
        score_threshold: decoded instances below this centre score are dropped.
        nms_iou_threshold: IoU of the box NMS between instances.
        backbone: see :class:`BaseTask` (also for the remaining arguments).
        **kwargs: the remaining :class:`BaseTask` arguments (``output_stride``, ``lr``...).
    """

    monitor = "val_keypoint_ap"
    mode = "max"
    loss_names = BOX_TERMS + POSE_TERMS
    data_checks = ("num_classes", "num_keypoints")

    def __init__(
        self,
        num_keypoints: int = 13,
        num_classes: int = 1,
        head: KeypointHeadName = "centernet",
        head_channels: int = 64,
        heatmap_weight: float = 1.0,
        size_weight: float = 1.0,
        offset_weight: float = 1.0,
        keypoint_heatmap_weight: float = 1.0,
        displacement_weight: float = 1.0,
        keypoint_threshold: float = 0.1,
        refine: RefineMethod = "quarter",
        oks_sigmas: list[float] | None = None,
        pck_threshold: float = 0.2,
        max_detections: int = 20,
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
        if hp.num_keypoints < 1:
            raise ConfigurationError(f"num_keypoints must be >= 1, got {hp.num_keypoints}.")
        if not 0.0 <= hp.keypoint_threshold <= 1.0 or hp.pck_threshold <= 0:
            raise ConfigurationError(
                "Need keypoint_threshold in [0, 1] and pck_threshold > 0; got "
                f"{hp.keypoint_threshold}, {hp.pck_threshold}."
            )
        keypoint_sigmas(hp.num_keypoints, hp.oks_sigmas)  # raises on a length mismatch

    @override
    def build_head(self, in_channels: int) -> nn.Module:
        hp = self.hparams
        return PoseHead(in_channels, hp.num_keypoints, hp.num_classes, hp.head_channels)

    @override
    def configure_losses(self) -> None:
        """Nothing to build: the loss is a sum of functional terms (``ops.centernet``)."""

    @override
    def make_metrics(self, **kwargs: Any) -> MetricCollection:
        hp = self.hparams
        return MetricCollection(
            {
                "keypoint_ap": KeypointAP(hp.num_keypoints, hp.oks_sigmas, **kwargs),
                "pck": PCK(hp.num_keypoints, hp.pck_threshold, **kwargs),
            }
        )

    @override
    def loss_terms(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        geometry, centres = self.centre_targets(outputs, batch)
        heat = outputs["keypoint_heatmap"]
        keypoints = encode_keypoint_targets(
            batch["boxes"], batch["keypoints"], tuple(heat.shape[-2:]), geometry, centres
        )
        unit = self.original_stride()
        return {
            **box_loss_terms(outputs, centres, unit),
            **pose_loss_terms(outputs, centres, keypoints, unit),
        }

    @override
    def decode(self, outputs: dict[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """Per-image ``boxes``, ``scores``, ``labels`` and ``keypoints`` ``[N, K, 3]``.

        Keypoints are ``(x, y, score)`` in image coordinates.
        """
        hp = self.hparams
        return decode_keypoints(
            outputs,
            self.geometry(images, outputs["heatmap"]),
            max_detections=hp.max_detections,
            score_threshold=hp.score_threshold,
            iou_threshold=hp.nms_iou_threshold,
            keypoint_threshold=hp.keypoint_threshold,
            refine=hp.refine,
        )

    @override
    def rescale(self, result: dict[str, Tensor], scale: Tensor) -> None:
        super().rescale(result, scale)
        keypoints = result["keypoints"].clone()
        keypoints[..., :2] = keypoints[..., :2] / scale
        result["orig_keypoints"] = keypoints
