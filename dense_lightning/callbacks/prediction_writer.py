"""PredictionImageWriter: ``dense-lightning predict`` saves its predictions as PNG pictures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import Tensor, nn
from typing_extensions import override

from dense_lightning.equivalent import to_original
from dense_lightning.viz import (
    VizContext,
    render_dense_vs_original,
    render_predictions,
    slice_batch,
    split_predictions,
    to_hwc,
)

__all__ = ["PredictionImageWriter", "save_png"]


def save_png(path: Path, picture: Tensor) -> None:
    """Write ``uint8 [3, H, W]`` to ``path`` as PNG, atomically.

    The file is written to a temporary sibling and renamed (a rename within one folder is
    atomic), so a reader sees either no file or the whole picture, never a partial PNG.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(to_hwc(picture)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PredictionImageWriter(BasePredictionWriter):
    """Save one PNG per predicted image: the prediction drawn on it, ground truth beside it.

    Segmentation overlays, boxes with class names and scores, or keypoint skeletons, as
    :class:`~dense_lightning.callbacks.ValidationImageLogger` draws them. With
    ``dense_vs_original``, a second file ``<name>_dense.png`` shows the original-stride and the
    dense maps of the image side by side. Each file is written through a temporary sibling and
    renamed, so a reader never sees half a PNG. Every rank writes the images it predicted.

    Files are named after the batch's ``image_id`` (``image_<id>.png``) when it has one, else
    after the sample's index in the dataset (``sample_<index>.png``).

    Args:
        output_dir: folder of the PNG files; default ``<default_root_dir>/predictions``.
        dense_vs_original: also write the dense vs original picture (dense networks only).
        score_threshold: boxes and instances below this score are not drawn.
        attribute: the network attribute of the LightningModule.
        image_key: key of the images in a batch dict.
        min_size: pictures are enlarged (nearest neighbour) until their shorter side is this.
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
        self.output_dir = output_dir
        self.dense_vs_original = dense_vs_original
        self.score_threshold = score_threshold
        self.attribute = attribute
        self.image_key = image_key
        self.min_size = min_size
        #: Files written during the last ``predict`` (this rank).
        self.written: list[Path] = []
        self._original: nn.Module | None = None

    def resolve_dir(self, trainer: Trainer) -> Path:
        """The output folder for ``trainer`` (see ``output_dir``)."""
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.default_root_dir, "predictions")

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.written = []
        self._original = None

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._original = None  # a full copy of the network: do not keep it around

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
        names = self.names(batch, batch_indices, batch_idx, dataloader_idx, len(predictions))
        pictures: dict[Path, Tensor] = {}
        for i, (name, pred) in enumerate(zip(names, predictions, strict=True)):
            sample = slice_batch(batch, i + 1, i)
            pictures[directory / f"{name}.png"] = render_predictions(
                images[i : i + 1], [pred], sample, ctx
            )
        network = getattr(pl_module, self.attribute, None)
        if self.dense_vs_original and getattr(network, "dense_info", None) is not None:
            if self._original is None:
                self._original = to_original(network).eval()
            for i, name in enumerate(names):
                comparison = render_dense_vs_original(
                    network, images[i : i + 1], ctx, original=self._original
                )
                pictures[directory / f"{name}_dense.png"] = comparison.image
        for path, picture in pictures.items():
            save_png(path, picture)
        self.written.extend(pictures)

    @staticmethod
    def names(
        batch: Mapping[str, Any],
        batch_indices: Sequence[int] | None,
        batch_idx: int,
        dataloader_idx: int,
        count: int,
    ) -> list[str]:
        """File stems of the ``count`` images of a batch, unique across the whole predict run."""
        prefix = f"loader{dataloader_idx}_" if dataloader_idx else ""
        if "image_id" in batch:
            ids = batch["image_id"]
            ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
            return [f"{prefix}image_{image_id}" for image_id in ids[:count]]
        if batch_indices is not None and len(batch_indices) == count:
            return [f"{prefix}sample_{int(index):06d}" for index in batch_indices]
        return [f"{prefix}batch_{batch_idx:05d}_{i:03d}" for i in range(count)]
