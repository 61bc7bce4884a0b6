"""ValidationImageLogger: pictures of predictions, and of dense vs original maps, per epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from typing_extensions import override

from dense_lightning.equivalent import get_dense_info
from dense_lightning.equivalent.cells import CellGeometry
from dense_lightning.loggers import image_loggers, log_images
from dense_lightning.viz import (
    VizContext,
    ordinal,
    output_geometry,
    predict_images,
    render_dense_vs_original,
    render_predictions,
    slice_batch,
)

__all__ = ["ValidationImageLogger"]


class ValidationImageLogger(Callback):
    """Log a few validation pictures to wandb and TensorBoard every ``every_n_epochs`` epochs.

    From the first validation batch, on rank zero, two pictures are drawn and logged under
    ``<prefix>/predictions`` and ``<prefix>/dense_vs_original``:

    - a grid with one row per image: ground truth and prediction (segmentation overlays,
      boxes with class names and scores above ``score_threshold``, keypoint skeletons) and a
      class legend, from the task's ``predict_step``, so what is drawn is what
      ``dense-lightning predict`` returns;
    - the input next to the raw maps of ``to_original(network)`` (one block per original
      cell) and of the dense network, on one colour scale with a legend or colour bar, each
      cell where it sits in the image; the dense cells that are original cells are outlined
      and match their blocks' colours: the caption gives the largest difference.

    The hook is ``on_validation_batch_end`` because the batch is at hand there and the
    module is already in eval mode; the task does not need to return its outputs (the
    pictures are recomputed on at most ``max_images`` images). Nothing is drawn when no
    logger can show images (``fast_dev_run`` replaces the loggers), during the sanity
    check, or for a network that is not dense (then only the prediction grid is logged).

    A LightningModule may draw its own pictures instead: a method
    ``visualize(batch, max_images) -> Mapping[str, Tensor]`` returning ``uint8 [3, H, W]``
    pictures by name is logged as ``<prefix>/<name>``.

    Args:
        every_n_epochs: log at the end of every n-th epoch's first validation batch.
        max_images: images per picture.
        score_threshold: boxes and instances below this score are not drawn.
        dense_vs_original: also log the dense vs original picture.
        attribute: the network attribute of the LightningModule (as ``DenseConversion``).
        image_key: key of the images in a batch dict.
        prefix: key prefix of the logged pictures.
        min_size: panels are enlarged (nearest neighbour) until their shorter side is this.

    Raises:
        ValueError: ``every_n_epochs``, ``max_images`` or ``min_size`` is below 1, or
            ``score_threshold`` is outside ``[0, 1]``.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_images: int = 4,
        score_threshold: float = 0.3,
        dense_vs_original: bool = True,
        attribute: str = "model",
        image_key: str = "image",
        prefix: str = "val",
        min_size: int = 128,
    ) -> None:
        if every_n_epochs < 1 or max_images < 1 or min_size < 1:
            raise ValueError(
                "ValidationImageLogger needs every_n_epochs, max_images and min_size >= 1; got "
                f"{every_n_epochs}, {max_images} and {min_size}."
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.score_threshold = score_threshold
        self.dense_vs_original = dense_vs_original
        self.attribute = attribute
        self.image_key = image_key
        self.prefix = prefix
        self.min_size = min_size
        #: Captions of the last pictures logged, by key (handy in tests and notebooks).
        self.last_captions: dict[str, str] = {}
        # Where the network's cells sit: traced once per network (it costs forward passes).
        self._geometry: tuple[int, CellGeometry] | None = None

    def should_log(self, trainer: Trainer, batch_idx: int, dataloader_idx: int) -> bool:
        """Whether this validation batch is the one to draw."""
        return (
            batch_idx == 0
            and dataloader_idx == 0
            and not trainer.sanity_checking
            and trainer.is_global_zero
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
            and bool(image_loggers(trainer))
        )

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.should_log(trainer, batch_idx, dataloader_idx):
            return
        pictures, captions = self.render(trainer, pl_module, batch)
        if pictures:
            log_images(trainer, pictures, captions)
            self.last_captions = captions

    def geometry(self, network: nn.Module, method: str) -> CellGeometry:
        """Where ``network``'s cells sit, traced on first use and kept for that network."""
        if self._geometry is None or self._geometry[0] != id(network):
            self._geometry = (id(network), output_geometry(network, method))
        return self._geometry[1]

    def render(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any
    ) -> tuple[dict[str, Tensor], dict[str, str]]:
        """The pictures of ``batch`` and their captions, keyed ``<prefix>/<name>``."""
        if hasattr(pl_module, "visualize"):
            drawn = pl_module.visualize(batch, self.max_images)
            return {f"{self.prefix}/{k}": v for k, v in drawn.items()}, {}
        ctx = VizContext.from_module(
            pl_module,
            trainer.datamodule,
            score_threshold=self.score_threshold,
            min_size=self.min_size,
        )
        batch = slice_batch(batch, self.max_images)
        images = batch[self.image_key] if isinstance(batch, Mapping) else batch[0]
        pictures: dict[str, Tensor] = {}
        captions: dict[str, str] = {}
        if isinstance(batch, Mapping) and is_overridden("predict_step", pl_module):
            key = f"{self.prefix}/predictions"
            predictions = predict_images(pl_module, batch, self.max_images)
            pictures[key] = render_predictions(images, predictions, batch, ctx)
            captions[key] = f"epoch {trainer.current_epoch}: target | prediction"
        network = getattr(pl_module, self.attribute, None)
        info = get_dense_info(network) if isinstance(network, nn.Module) else None
        if self.dense_vs_original and info is not None:
            key = f"{self.prefix}/dense_vs_original"
            comparison = render_dense_vs_original(
                network, images, ctx, geometry=self.geometry(network, info.method)
            )
            pictures[key] = comparison.image
            captions[key] = (
                f"epoch {trainer.current_epoch}: original stride {info.original_stride} vs "
                f"dense stride {info.output_stride}; every {ordinal(comparison.factor)} dense "
                f"cell equals the original cell at its place (max relative difference "
                f"{comparison.max_rel_error:.1e})"
            )
        elif self.dense_vs_original and trainer.current_epoch == 0:
            rank_zero_info(
                f"ValidationImageLogger: {type(pl_module).__name__}.{self.attribute} is not "
                "dense, so there is no dense vs original picture."
            )
        return pictures, captions
