"""The pretraining data of :mod:`benchmarks.accuracy`: shapes the fine-tuning task never shows.

The fine-tuning task segments the first shapes of :data:`~dense_lightning.data.shapes.SHAPES`
(disc, square, triangle); pretraining segments the last ones (ring, cross, diamond) from
another seed, so the pretrained start knows images of this kind but not the target classes,
as an ImageNet backbone knows photographs but not a segmentation benchmark's labels.
"""

from __future__ import annotations

import numpy as np

from dense_lightning.data import SyntheticSegmentationDataModule
from dense_lightning.data.base import Split
from dense_lightning.data.shapes import (
    SHAPES,
    PlacedShape,
    contrasting_colour,
    paint,
    place_shapes,
    shape_mask,
    textured_background,
)
from dense_lightning.data.synthetic import SyntheticSegmentationDataset, sample_rng

__all__ = ["DisjointShapesDataModule"]


class _DisjointShapes(SyntheticSegmentationDataset):
    """Segmentation of the last ``num_classes - 1`` shapes, labelled ``1..num_classes-1``."""

    def render(self, index: int) -> tuple[np.ndarray, list[PlacedShape]]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = sample_rng(self.seed, self.split, index)
        first = len(SHAPES) - self.num_kinds
        image = textured_background(rng, self.image_size)
        shapes = []
        for kind, cx, cy, radius in place_shapes(
            rng, self.image_size, self.num_kinds, self.max_objects
        ):
            mask = shape_mask(SHAPES[first + kind], cx, cy, radius, self.image_size)
            paint(rng, image, mask, contrasting_colour(rng, image, mask))
            shapes.append(PlacedShape(kind, mask))
        return image, shapes


class DisjointShapesDataModule(SyntheticSegmentationDataModule):
    """:class:`SyntheticSegmentationDataModule` drawing the last shapes instead of the first.

    With ``num_classes <= len(SHAPES) // 2 + 1`` its classes and the default module's are
    disjoint.
    """

    def build_dataset(self, split: Split) -> _DisjointShapes:
        """Build the dataset of ``split``."""
        return _DisjointShapes(
            self.split_sizes[split],
            self.num_classes,
            self.image_size,
            self.seed,
            split,
            self.max_objects,
        )
