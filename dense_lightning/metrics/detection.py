"""Box mAP restricted to scalar summaries, so it logs and evaluates like any other metric."""

from typing import Any

from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

__all__ = ["DetectionMAP"]


class DetectionMAP(MeanAveragePrecision):
    """torchmetrics' COCO box mAP (pycocotools backend) returning ``map``, ``map_50``, ``map_75``.

    :class:`~torchmetrics.detection.MeanAveragePrecision` also returns per-size values and a
    ``classes`` tensor; the latter is not a scalar, which ``LightningModule.log_dict`` and
    ``float()`` reject. Everything else, DDP gathering included, is the parent's.

    Args:
        keys: the summary values to return, from the parent's output names.
        kwargs: passed to :class:`~torchmetrics.detection.MeanAveragePrecision`; ``backend``
            defaults to ``"pycocotools"`` (``faster_coco_eval`` is an optional dependency).
    """

    def __init__(self, keys: tuple[str, ...] = ("map", "map_50", "map_75"), **kwargs: Any) -> None:
        kwargs.setdefault("backend", "pycocotools")
        super().__init__(**kwargs)
        self.keys = tuple(keys)

    def compute(self) -> dict[str, Tensor]:
        """COCO mAP summaries, -1 where undefined (e.g. no ground truth)."""
        result = super().compute()
        return {key: result[key] for key in self.keys}
