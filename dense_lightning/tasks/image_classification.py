"""Image classification: a timm classifier trained dense, scored on phase 0 and on all phases."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from dense_lightning.errors import ConfigurationError
from dense_lightning.tasks.image import ImageTask, phase_mean, phase_zero

__all__ = ["ImageClassificationTask"]


class ImageClassificationTask(ImageTask):
    """One class per image with any timm classifier, trained dense or at its native stride.

    Dense, the classifier gives ``k*k`` logit vectors per image (``k`` = original stride /
    output stride), one per shifted view (:mod:`~dense_lightning.equivalent.head`). Training
    minimises the cross-entropy averaged over the phases, plus ``lattice_loss_weight`` times
    the cross-entropy of phase 0, which is the exported classifier's (logged as
    ``{stage}_loss_lattice``). Metrics: ``acc``, the accuracy of phase 0 (what the export
    computes), and ``acc_phase_mean``, that of the logits averaged over the phases (the dense
    ensemble over ``k*k`` shifted views, at the dense network's cost).

    Batches are ``{"image": float [B, 3, H, W], "label": int64 [B]}``.

    Args:
        backbone: timm classifier name, e.g. ``"resnet18"``.
        num_classes: classes (at least 2).
        label_smoothing: cross-entropy label smoothing in ``[0, 1)``.
        **kwargs: the remaining :class:`~dense_lightning.tasks.BaseTask` arguments
            (``pretrained``, ``output_stride``, ``lattice_loss_weight``, ``lr``...).
    """

    monitor = "val_acc"
    mode = "max"
    data_checks = ("num_classes",)

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 5,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone=backbone, **kwargs)

    @override
    def check_hparams(self) -> None:
        super().check_hparams()
        hp = self.hparams
        if hp.num_classes < 2:
            raise ConfigurationError(f"num_classes must be >= 2, got {hp.num_classes}")
        if not 0 <= hp.label_smoothing < 1:
            raise ConfigurationError(f"label_smoothing must be in [0, 1), got {hp.label_smoothing}")

    @override
    def num_outputs(self) -> int:
        return self.hparams.num_classes

    @override
    def configure_losses(self) -> None:
        """Cross-entropy, applied to every phase."""

    @override
    def make_metrics(self, **kwargs: Any) -> MetricCollection:
        common = {"num_classes": self.hparams.num_classes, "average": "micro", **kwargs}
        # Separate states: the two accuracies are updated with different predictions.
        return MetricCollection(
            {"acc": MulticlassAccuracy(**common), "acc_phase_mean": MulticlassAccuracy(**common)},
            compute_groups=False,
        )

    @override
    def loss_terms(self, outputs: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Cross-entropy of ``[B, C, P]`` logits, averaged over the batch and the phases."""
        labels = batch["label"]
        if labels.ndim != 1 or labels.shape[0] != outputs.shape[0]:
            raise ValueError(
                f"expected labels int64 [B] for a batch of {outputs.shape[0]}, got "
                f"{tuple(labels.shape)}"
            )
        targets = labels[:, None].expand(-1, outputs.shape[-1])
        loss = F.cross_entropy(outputs, targets, label_smoothing=self.hparams.label_smoothing)
        return {"loss": loss}

    @override
    def update_metrics(
        self, metrics: MetricCollection, outputs: Tensor, batch: dict[str, Any]
    ) -> None:
        metrics["acc"].update(phase_zero(outputs).argmax(1), batch["label"])
        metrics["acc_phase_mean"].update(phase_mean(outputs).argmax(1), batch["label"])

    @override
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Classes ``int64 [B]``: phase 0's and the phase mean's.

        ``"prediction"`` is phase 0 (the exported classifier's), ``"prediction_phase_mean"``
        comes from the logits averaged over the phases.
        """
        outputs = self(batch["image"])
        return {
            "prediction": phase_zero(outputs).argmax(1),
            "prediction_phase_mean": phase_mean(outputs).argmax(1),
        }
