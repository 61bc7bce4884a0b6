"""PredictionImageWriter: ``dense-lightning predict`` saves its predictions as PNG pictures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from dense_lightning.equivalent import get_dense_info, to_original
from dense_lightning.equivalent.cells import CellGeometry
from dense_lightning.files import atomic_write_all
from dense_lightning.viz import (
    VizContext,
    output_geometry,
    render_dense_vs_original,
    render_predictions,
    slice_batch,
    split_predictions,
)
from dense_lightning.viz.png import png_writer

__all__ = ["NAME_DIGITS", "PredictionImageWriter"]

#: Digits of the image number in file names: names sort in order up to a million images.
NAME_DIGITS = 6


class PredictionImageWriter(BasePredictionWriter):
    """Save one PNG per predicted image: the prediction drawn on it, ground truth beside it.

    Segmentation overlays, boxes with class names and scores, or keypoint skeletons, with a
    class legend, as :class:`~dense_lightning.callbacks.ValidationImageLogger` draws them. With
    ``dense_vs_original``, a second file ``<name>_dense.png`` shows the original-stride and the
    dense maps of the image side by side. A batch's files are written atomically (a reader
    never sees half a PNG) with the umask's permissions. Every rank writes the images it
    predicted; at the end, rank zero logs how many files were written and where.

    Every task names its files alike: ``image_<index>.png``, the sample's index in the
    dataset, zero-padded to six digits so that names sort in dataset order (``image_000007``);
    later dataloaders add ``loader<i>_`` in front. Without dataset indices (a sampler Lightning
    cannot track), ``<index>`` counts the images this rank predicted, and with several ranks
    ``rank<r>_`` goes in front.

    Args:
        output_dir: folder of the PNG files; default ``<default_root_dir>/predictions``.
        dense_vs_original: also write the dense vs original picture (dense networks only).
        score_threshold: boxes and instances scored below this are not drawn.
        attribute: the network attribute of the LightningModule.
        image_key: key of the images in a batch dict.
        min_size: pictures are enlarged (nearest neighbour) until their shorter side is this.

    Raises:
        ValueError: ``min_size`` is below 1 or ``score_threshold`` outside ``[0, 1]``.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        dense_vs_original: bool = False,
        score_threshold: float = 0.3,
        attribute: str = "model",
        image_key: str = "image",
        min_size: int = 128,
    ) -> None:
        super().__init__(write_interval="batch")
        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.output_dir = output_dir
        self.dense_vs_original = dense_vs_original
        self.score_threshold = score_threshold
        self.attribute = attribute
        self.image_key = image_key
        self.min_size = min_size
        #: Files written during the last ``predict`` (this rank).
        self.written: list[Path] = []
        self._original: nn.Module | None = None
        self._geometry: CellGeometry | None = None
        self._counted: dict[int, int] = {}

    def resolve_dir(self, trainer: Trainer) -> Path:
        """The output folder for ``trainer`` (see ``output_dir``)."""
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.default_root_dir, "predictions")

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.written = []
        self._original = None
        self._geometry = None
        self._counted = {}

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._original = None  # a full copy of the network: do not keep it around
        # Every rank takes part in the sum; rank zero reports once for all of them.
        count = torch.tensor(len(self.written), device=pl_module.device)
        total = int(trainer.strategy.reduce(count, reduce_op="sum"))
        rank_zero_info(
            f"PredictionImageWriter: wrote {total} PNG file{'s' if total != 1 else ''} "
            f"to {self.resolve_dir(trainer).resolve()}"
        )

    @override
    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"PredictionImageWriter needs dict batches with {self.image_key!r}, "
                f"got {type(batch).__name__}."
            )
        ctx = VizContext.from_module(
            pl_module,
            trainer.datamodule,
            score_threshold=self.score_threshold,
            min_size=self.min_size,
        )
        directory = self.resolve_dir(trainer)
        images = batch[self.image_key]
        predictions = split_predictions(prediction)
        first = self._counted.get(dataloader_idx, 0)
        self._counted[dataloader_idx] = first + len(predictions)
        names = self.names(
            batch_indices, len(predictions), dataloader_idx, first, trainer.world_size,
            trainer.global_rank,
        )  # fmt: skip
        pictures: dict[Path, Tensor] = {}
        for i, (name, pred) in enumerate(zip(names, predictions, strict=True)):
            sample = slice_batch(batch, i + 1, i)
            pictures[directory / f"{name}.png"] = render_predictions(
                images[i : i + 1], [pred], sample, ctx
            )
        network = getattr(pl_module, self.attribute, None)
        info = get_dense_info(network) if isinstance(network, nn.Module) else None
        if self.dense_vs_original and info is not None:
            if self._original is None:
                self._original = to_original(network).eval()
                self._geometry = output_geometry(network, info.method)
            for i, name in enumerate(names):
                comparison = render_dense_vs_original(
                    network, images[i : i + 1], ctx, self._original, self._geometry
                )
                pictures[directory / f"{name}_dense.png"] = comparison.image
        atomic_write_all({path: png_writer(picture) for path, picture in pictures.items()})
        self.written.extend(pictures)

    @staticmethod
    def names(
        batch_indices: Sequence[int] | None,
        count: int,
        dataloader_idx: int = 0,
        first: int = 0,
        world_size: int = 1,
        rank: int = 0,
    ) -> list[str]:
        """File stems of the ``count`` images of a batch, unique across the whole predict run.

        Args:
            batch_indices: the samples' indices in the dataset (``None`` when unknown).
            count: images in the batch.
            dataloader_idx: the predict dataloader.
            first: images this rank predicted from that dataloader before this batch (the
                numbers used without ``batch_indices``).
            world_size: number of ranks.
            rank: this rank.
        """
        prefix = f"loader{dataloader_idx}_" if dataloader_idx else ""
        if batch_indices is not None and len(batch_indices) == count:
            numbers = [int(index) for index in batch_indices]
        else:
            numbers = list(range(first, first + count))
            prefix = f"rank{rank}_{prefix}" if world_size > 1 else prefix
        return [f"{prefix}image_{number:0{NAME_DIGITS}d}" for number in numbers]
