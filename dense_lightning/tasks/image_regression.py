"""Image regression: one scalar per image (an age, a count, a size), trained on all phases."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MetricCollection
from typing_extensions import override

from dense_lightning.errors import ConfigurationError
from dense_lightning.tasks.image import ImageTask

__all__ = ["ImageRegressionTask", "RegressionLoss"]

RegressionLoss = Literal["l1", "l2"]


class ImageRegressionTask(ImageTask):
    """A scalar per image with any timm classifier (one output), as in apparent-age estimation.

    The network predicts the normalised target ``(target - target_mean) / target_scale``;
    losses are taken there (so one learning rate suits targets of any scale) and predictions
    and metrics are in the target's units. Dense, each of the ``k*k`` phases predicts the
    target; training minimises the loss averaged over the phases plus ``lattice_loss_weight``
    times the loss of phase 0, the exported network's (``{stage}_loss_lattice``). Metrics:
    ``mae``, the mean absolute error of phase 0 (what the export computes), and
    ``mae_phase_mean``, that of the prediction averaged over the phases.

    Batches are ``{"image": float [B, 3, H, W], "target": float [B]}``.

    Args:
        backbone: timm classifier name, e.g. ``"resnet18"``.
        loss: ``"l1"`` (mean absolute error) or ``"l2"`` (mean squared error).
        target_mean: subtracted from the targets before the loss.
        target_scale: the targets are divided by it (after subtracting the mean); > 0.
        **kwargs: the remaining :class:`~dense_lightning.tasks.BaseTask` arguments
            (``pretrained``, ``output_stride``, ``lattice_loss_weight``, ``lr``...).
    """

    monitor = "val_mae"
    mode = "min"

    def __init__(
        self,
        backbone: str = "resnet18",
        loss: RegressionLoss = "l1",
        target_mean: float = 0.0,
        target_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone=backbone, **kwargs)

    @override
    def check_hparams(self) -> None:
        super().check_hparams()
        if not self.hparams.target_scale > 0:
            raise ConfigurationError(f"target_scale must be > 0, got {self.hparams.target_scale}")

    @override
    def num_outputs(self) -> int:
        return 1

    @override
    def configure_losses(self) -> None:
        """L1 or squared error on normalised targets, applied to every phase."""
        self.criterion = F.l1_loss if self.hparams.loss == "l1" else F.mse_loss

    @override
    def make_metrics(self, **kwargs: Any) -> MetricCollection:
        # Separate states: the two errors are updated with different predictions.
        return MetricCollection(
            {"mae": MeanAbsoluteError(**kwargs), "mae_phase_mean": MeanAbsoluteError(**kwargs)},
            compute_groups=False,
        )

    def predictions(self, outputs: Tensor) -> Tensor:
        """``[B, 1, P]`` normalised outputs -> ``[B, P]`` predictions in the target's units."""
        return outputs[:, 0] * self.hparams.target_scale + self.hparams.target_mean

    @override
    def loss_terms(self, outputs: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The loss of every phase on the normalised target, averaged."""
        target = batch["target"]
        if target.ndim != 1 or target.shape[0] != outputs.shape[0]:
            raise ValueError(
                f"expected targets float [B] for a batch of {outputs.shape[0]}, got "
                f"{tuple(target.shape)}"
            )
        hp = self.hparams
        normalised = (target.to(outputs.dtype) - hp.target_mean) / hp.target_scale
        return {"loss": self.criterion(outputs[:, 0], normalised[:, None].expand_as(outputs[:, 0]))}

    @override
    def update_metrics(
        self, metrics: MetricCollection, outputs: Tensor, batch: dict[str, Any]
    ) -> None:
        predictions = self.predictions(outputs)
        metrics["mae"].update(predictions[:, 0], batch["target"])
        metrics["mae_phase_mean"].update(predictions.mean(1), batch["target"])

    @override
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Predictions ``float [B]`` in the target's units: phase 0's and the phase mean's.

        ``"prediction"`` is phase 0 (the exported network's), ``"prediction_phase_mean"`` the
        prediction averaged over the phases.
        """
        predictions = self.predictions(self(batch["image"]))
        return {"prediction": predictions[:, 0], "prediction_phase_mean": predictions.mean(1)}
