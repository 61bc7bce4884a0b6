"""Multi-person keypoint estimation: CenterNet's pose model on any timm CNN.

Why bottom-up with centre grouping rather than top-down: both the synthetic data and COCO have
several instances per image, and a top-down model needs boxes and crops (RoI resampling), which
would put a non-local step inside the network. CenterNet's pose model stays one fully local
network, so the dense conversion covers all of it, and one pass gives every instance.
"""

from typing import Any, Literal

from torch import Tensor
from torchmetrics import MetricCollection
from typing_extensions import override

from dense_lightning.metrics import PCK, KeypointAP, keypoint_sigmas
from dense_lightning.models import BackboneWithHead, create_backbone
from dense_lightning.models.heads.heatmap import PoseHead
from dense_lightning.ops import (
    decode_keypoints,
    encode_keypoint_targets,
    gather_cells,
    heatmap_focal_loss,
    masked_l1_loss,
)
from dense_lightning.tasks.detection import ObjectDetectionTask

__all__ = ["KEYPOINT_HEADS", "KeypointEstimationTask"]

KEYPOINT_HEADS: tuple[str, ...] = ("centernet",)


class KeypointEstimationTask(ObjectDetectionTask):
    """Keypoints of every instance, trained dense or at the backbone's native stride.

    ``self.model`` is backbone + :class:`~dense_lightning.models.heads.PoseHead`: the
    :class:`ObjectDetectionTask` maps for instance centres plus one heatmap per keypoint and
    each keypoint's displacement (pixels) from its instance centre. Decoding regresses the
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
        keypoint_heatmap_weight: weight of the focal loss on keypoint heatmaps.
        displacement_weight: weight of the L1 loss on displacements (in cells).
        keypoint_threshold: heatmap score a peak needs to replace a regressed keypoint.
        refine: sub-cell refinement of heatmap peaks: ``"quarter"`` (a quarter cell toward
            the higher neighbour), ``"soft_argmax"`` (3x3 centroid) or ``"none"``.
        oks_sigmas: per-keypoint OKS sigmas; default COCO's for 17 keypoints, else uniform.
        pck_threshold: PCK distance threshold as a fraction of the box size.
        max_detections: instances decoded per image (COCO keypoint AP counts 20).
        backbone: see :class:`BaseTask` (also for the remaining arguments).
        **kwargs: the remaining :class:`ObjectDetectionTask` / :class:`BaseTask` arguments.
    """

    monitor = "val_keypoint_ap"
    mode = "max"
    heads = KEYPOINT_HEADS
    loss_names = ("heatmap", "size", "offset", "keypoint_heatmap", "displacement")

    def __init__(
        self,
        num_keypoints: int = 13,
        num_classes: int = 1,
        head: Literal["centernet"] = "centernet",
        head_channels: int = 64,
        keypoint_heatmap_weight: float = 1.0,
        displacement_weight: float = 1.0,
        keypoint_threshold: float = 0.1,
        refine: Literal["quarter", "soft_argmax", "none"] = "quarter",
        oks_sigmas: list[float] | None = None,
        pck_threshold: float = 0.2,
        max_detections: int = 20,
        backbone: str = "resnet18",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            head=head,
            head_channels=head_channels,
            max_detections=max_detections,
            backbone=backbone,
            **kwargs,
        )

    @override
    def check_hparams(self) -> None:
        super().check_hparams()
        hp = self.hparams
        if hp.num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {hp.num_keypoints}.")
        if hp.refine not in ("quarter", "soft_argmax", "none"):
            raise ValueError(
                f"Unknown refine {hp.refine!r}; choose 'quarter', 'soft_argmax' or 'none'."
            )
        if not 0.0 <= hp.keypoint_threshold <= 1.0 or hp.pck_threshold <= 0:
            raise ValueError(
                "Need keypoint_threshold in [0, 1] and pck_threshold > 0; got "
                f"{hp.keypoint_threshold}, {hp.pck_threshold}."
            )
        keypoint_sigmas(hp.num_keypoints, hp.oks_sigmas)  # raises on a length mismatch

    @override
    def configure_models(self) -> None:
        hp = self.hparams
        backbone = create_backbone(
            hp.backbone, pretrained=hp.pretrained, checkpoint_path=hp.checkpoint_path
        )
        head = PoseHead(
            self.feature_channels(backbone), hp.num_keypoints, hp.num_classes, hp.head_channels
        )
        self.model = BackboneWithHead(backbone, head)

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
        stride = self.stride_of(outputs, batch["image"])
        terms, centres = self.centre_loss_terms(outputs, batch, stride)
        heat = outputs["keypoint_heatmap"]
        t = encode_keypoint_targets(
            batch["boxes"], batch["keypoints"], tuple(heat.shape[-2:]), stride
        )
        terms["keypoint_heatmap"] = heatmap_focal_loss(
            heat, t["keypoint_heatmap"], t["keypoint_positive"]
        )
        # Displacements are read at the centre cells; both encoders keep the same instances
        # in the same order.
        cells = (centres["batch"], centres["ys"], centres["xs"])
        pred = gather_cells(outputs["displacement"], *cells).view(-1, heat.shape[1], 2)
        terms["displacement"] = masked_l1_loss(
            pred / stride, t["displacement"] / stride, t["keypoint_mask"]
        )
        return terms

    @override
    def decode(self, outputs: dict[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """Per-image ``boxes``, ``scores``, ``labels`` and ``keypoints`` ``[N, K, 3]``.

        Keypoints are ``(x, y, score)`` in input pixels.
        """
        hp = self.hparams
        return decode_keypoints(
            outputs,
            self.stride_of(outputs, images),
            max_detections=hp.max_detections,
            score_threshold=hp.score_threshold,
            iou_threshold=hp.nms_iou_threshold,
            keypoint_threshold=hp.keypoint_threshold,
            refine=hp.refine,
        )

    @override
    def setup(self, stage: str) -> None:
        self.check_data(
            getattr(self._trainer, "datamodule", None), ("num_classes", "num_keypoints")
        )

    @override
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Tensor]]:
        """Per-image instances (see :meth:`decode`) with ``image_id``.

        When the batch has ``scale``, ``orig_boxes`` and ``orig_keypoints`` are in the
        original image's pixels.
        """
        results = super().predict_step(batch, batch_idx, dataloader_idx)
        if "scale" in batch:
            for result, scale in zip(results, batch["scale"], strict=True):
                kpts = result["keypoints"].clone()
                kpts[..., :2] = kpts[..., :2] / scale
                result["orig_keypoints"] = kpts
        return results
