"""COCO keypoint AP (OKS) through pycocotools, as a torchmetrics Metric that gathers under DDP."""

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = ["COCO_KEYPOINT_SIGMAS", "DEFAULT_KEYPOINT_SIGMA", "KeypointAP", "keypoint_sigmas"]

# Per-keypoint OKS falloffs of the 17 COCO person keypoints (cocoeval.py, Params.setKpParams).
COCO_KEYPOINT_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
# For other skeletons: the mean of the COCO sigmas, i.e. a typical body joint's tolerance.
DEFAULT_KEYPOINT_SIGMA = 0.067

# Flat per-instance (or per-image) tensors; "cat" states, so DDP gathers every rank's.
_STATES = (
    "image_ids",
    "pred_keypoints",
    "pred_scores",
    "pred_labels",
    "pred_images",
    "gt_keypoints",
    "gt_boxes",
    "gt_areas",
    "gt_labels",
    "gt_images",
)
_STATS = {"keypoint_ap": 0, "keypoint_ap_50": 1, "keypoint_ap_75": 2, "keypoint_ar": 5}


def keypoint_sigmas(num_keypoints: int, sigmas: list[float] | None = None) -> np.ndarray:
    """Return OKS sigmas: ``sigmas`` if given, COCO's for 17 keypoints, else a uniform default.

    Raises:
        ValueError: ``sigmas`` has the wrong length or a non-positive value.
    """
    if sigmas is None:
        sigmas = (
            list(COCO_KEYPOINT_SIGMAS)
            if num_keypoints == len(COCO_KEYPOINT_SIGMAS)
            else [DEFAULT_KEYPOINT_SIGMA] * num_keypoints
        )
    if len(sigmas) != num_keypoints or min(sigmas) <= 0:
        raise ValueError(f"need {num_keypoints} positive OKS sigmas, got {list(sigmas)}")
    return np.asarray(sigmas, dtype=np.float64)


class KeypointAP(Metric):
    """COCO keypoint AP/AR (OKS), computed by pycocotools' ``COCOeval(iouType="keypoints")``.

    Predictions and targets are gathered as flat per-instance tensors (``cat`` states, so DDP
    concatenates every rank's), and ``compute`` builds COCO-format ground truth and results in
    memory. Instances are grouped by ``image_id`` from the targets (a running counter when
    absent), so ids must be unique across the evaluated set. The OKS scale is the target's
    ``area`` when given (COCO's segment area), else the box area.

    Args:
        num_keypoints: keypoints per instance ``K``.
        sigmas: OKS falloff per keypoint; defaults to COCO's for ``K == 17``, else uniform.
        kwargs: passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, num_keypoints: int, sigmas: list[float] | None = None, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        self.num_keypoints = num_keypoints
        self.sigmas = keypoint_sigmas(num_keypoints, sigmas)
        self._next_image_id = 0
        for name in _STATES:
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]]) -> None:
        """Add a batch.

        Args:
            preds: per image ``keypoints`` ``[N, K, 3]`` (x, y, score), ``scores`` ``[N]`` and
                optional ``labels`` ``[N]`` (class indices, default 0).
            target: per image ``keypoints`` ``[M, K, 3]`` (x, y, visibility), ``boxes``
                ``[M, 4]`` xyxy, optional ``labels``, ``area`` ``[M]`` and ``image_id``.
        """
        for pred, gt in zip(preds, target, strict=True):
            if gt["keypoints"].shape[-2] != self.num_keypoints:
                raise ValueError(
                    f"KeypointAP was built for {self.num_keypoints} keypoints, target has "
                    f"{gt['keypoints'].shape[-2]}"
                )
            image_id = self._image_id(gt)
            n, m = len(pred["keypoints"]), len(gt["keypoints"])
            boxes = gt["boxes"].float().reshape(-1, 4)
            area = gt.get("area")
            if area is None:
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            self.image_ids.append(torch.tensor([image_id], device=self.device))
            self.pred_keypoints.append(pred["keypoints"].float().reshape(n, self.num_keypoints, 3))
            self.pred_scores.append(pred["scores"].float())
            self.pred_labels.append(_labels(pred, n, self.device))
            self.pred_images.append(torch.full((n,), image_id, device=self.device))
            self.gt_keypoints.append(gt["keypoints"].float().reshape(m, self.num_keypoints, 3))
            self.gt_boxes.append(boxes)
            self.gt_areas.append(area.float())
            self.gt_labels.append(_labels(gt, m, self.device))
            self.gt_images.append(torch.full((m,), image_id, device=self.device))

    def reset(self) -> None:
        """Clear the gathered instances and restart the image-id counter."""
        super().reset()
        self._next_image_id = 0

    def _image_id(self, gt: dict[str, Tensor]) -> int:
        """The target's image id, or the next value of a running counter."""
        if "image_id" in gt:
            return int(gt["image_id"])
        self._next_image_id += 1
        return self._next_image_id - 1

    def compute(self) -> dict[str, Tensor]:
        """Run COCOeval on everything gathered.

        Returns:
            ``keypoint_ap`` (AP at OKS 0.50:0.95), ``keypoint_ap_50``, ``keypoint_ap_75`` and
            ``keypoint_ar``; -1 where COCO leaves them undefined (no labelled ground truth).
        """
        if len(self.image_ids) == 0:  # a list before a DDP sync, a tensor after it
            return {key: torch.tensor(-1.0) for key in _STATS}
        state = {name: dim_zero_cat(getattr(self, name)).detach().cpu().numpy() for name in _STATES}
        gt = _coco_ground_truth(state)
        detections = _coco_detections(state)
        stats = np.full(10, -1.0)
        if detections and gt.getAnnIds():
            with contextlib.redirect_stdout(io.StringIO()):
                evaluator = COCOeval(gt, gt.loadRes(detections), iouType="keypoints")
                evaluator.params.kpt_oks_sigmas = self.sigmas
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            stats = evaluator.stats
        elif gt.getAnnIds():
            stats = np.zeros(10)  # ground truth but no detections: nothing is found
        return {key: torch.tensor(float(stats[i])) for key, i in _STATS.items()}


def _labels(entry: dict[str, Tensor], n: int, device: torch.device) -> Tensor:
    """Class indices of ``entry``, zeros when it has none."""
    labels = entry.get("labels")
    return labels.long() if labels is not None else torch.zeros(n, dtype=torch.long, device=device)


def _coco_ground_truth(state: dict[str, np.ndarray]) -> COCO:
    """Build an in-memory pycocotools ``COCO`` of the gathered targets."""
    annotations = []
    for i in range(len(state["gt_images"])):
        x0, y0, x1, y1 = (float(v) for v in state["gt_boxes"][i])
        kpts = state["gt_keypoints"][i]
        annotations.append(
            {
                "id": i + 1,
                "image_id": int(state["gt_images"][i]),
                "category_id": int(state["gt_labels"][i]) + 1,
                "keypoints": kpts.reshape(-1).tolist(),
                "num_keypoints": int((kpts[:, 2] > 0).sum()),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": float(state["gt_areas"][i]),
                "iscrowd": 0,
            }
        )
    labels = set(state["gt_labels"].tolist()) | set(state["pred_labels"].tolist())
    coco = COCO()
    coco.dataset = {
        "images": [{"id": int(i)} for i in sorted(set(state["image_ids"].tolist()))],
        "annotations": annotations,
        "categories": [{"id": int(c) + 1, "name": str(c)} for c in sorted(labels)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_detections(state: dict[str, np.ndarray]) -> list[dict]:
    """The gathered predictions as a COCO results list."""
    return [
        {
            "image_id": int(state["pred_images"][i]),
            "category_id": int(state["pred_labels"][i]) + 1,
            "keypoints": state["pred_keypoints"][i].reshape(-1).tolist(),
            "score": float(state["pred_scores"][i]),
        }
        for i in range(len(state["pred_images"]))
    ]
