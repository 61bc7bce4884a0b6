"""Seeded synthetic one-shape images: which shape (classification), how big (regression).

Every image is a textured background (smooth colour noise, stripes or a gradient, plus pixel
noise, as in :mod:`dense_lightning.data.synthetic`) with one shape of random type, colour,
size and position, the shape lying wholly inside the image:

- classification: the label is the shape's type, ``SHAPES[label]`` (disc, square, triangle,
  ring, cross, diamond), drawn uniformly from the first ``num_classes`` types. Shapes are
  small (by default 6% to 16% of the image side as circumradius), so telling a disc from a
  ring or a square from a diamond takes the detail of a few pixels;
- regression, a stand-in for apparent age: the target is the shape's circumradius in
  percent of the image side (a float, by default between 8 and 30), whatever its type,
  which is drawn from the first ``num_kinds`` types.

Sample ``i`` of a split is a pure function of ``(seed, split, i)``, the same in every worker
and process.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dense_lightning.data.base import Split, check_choice, check_range
from dense_lightning.data.shapes import (
    SHAPES,
    contrasting_colour,
    paint,
    shape_mask,
    textured_background,
)
from dense_lightning.data.synthetic import (
    MIN_IMAGE_SIZE,
    SyntheticDataModule,
    image_to_tensor,
    sample_rng,
)

__all__ = [
    "SyntheticImageClassificationDataModule",
    "SyntheticImageClassificationDataset",
    "SyntheticImageRegressionDataModule",
    "SyntheticImageRegressionDataset",
    "check_radius_range",
    "render_one_shape",
]

# Below this circumradius (pixels) the shape types are no longer told apart by their masks.
_MIN_RADIUS_PIXELS = 3.0


def check_radius_range(
    radius_min: float, radius_max: float, image_size: int
) -> tuple[float, float]:
    """Return ``(radius_min, radius_max)`` after checking ``0 < radius_min <= radius_max <= 0.5``.

    Both are fractions of the image side; 0.5 is the largest shape that fits the image. The
    smallest shape must also be large enough in pixels at ``image_size`` to show its type.
    """
    if not 0 < radius_min <= radius_max <= 0.5:
        raise ValueError(
            f"need 0 < radius_min <= radius_max <= 0.5 (fractions of the image side), got "
            f"{radius_min} and {radius_max}"
        )
    if radius_min * image_size < _MIN_RADIUS_PIXELS:
        raise ValueError(
            f"radius_min={radius_min} is {radius_min * image_size:.1f} px at "
            f"image_size={image_size}; shapes under {_MIN_RADIUS_PIXELS:g} px cannot be told "
            "apart: raise radius_min or image_size"
        )
    return radius_min, radius_max


def render_one_shape(rng: np.random.Generator, size: int, kind: int, radius: float) -> np.ndarray:
    """A textured background with one shape ``SHAPES[kind]`` of circumradius ``radius`` pixels.

    The centre is uniform over the positions that keep the shape inside the image.

    Returns:
        The image, float32 ``[size, size, 3]`` in ``[0, 1]``.
    """
    image = textured_background(rng, size)
    cx, cy = (float(v) for v in rng.uniform(radius, size - radius, 2))
    mask = shape_mask(SHAPES[kind], cx, cy, radius, size)
    paint(rng, image, mask, contrasting_colour(rng, image, mask))
    return image


class _OneShape(Dataset):
    """Shared indexing and drawing of the one-shape datasets."""

    def __init__(
        self,
        num_samples: int,
        num_kinds: int,
        image_size: int,
        seed: int,
        split: Split,
        radius_range: tuple[float, float],
    ) -> None:
        check_range("num_samples", num_samples, 0)
        check_range("num_kinds", num_kinds, 1, len(SHAPES))
        check_range("image_size", image_size, MIN_IMAGE_SIZE)
        check_choice("split", split, Split)
        self.radius_range = check_radius_range(*radius_range, image_size=image_size)
        self.num_samples = num_samples
        self.num_kinds = num_kinds
        self.image_size = image_size
        self.seed = seed
        self.split = split

    def __len__(self) -> int:
        return self.num_samples

    def draw(self, index: int) -> tuple[np.ndarray, int, float]:
        """Sample ``index``: the image, the shape's type and its radius (fraction of the side)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = sample_rng(self.seed, self.split, index)
        kind = int(rng.integers(self.num_kinds))
        radius = float(rng.uniform(*self.radius_range))
        return render_one_shape(rng, self.image_size, kind, radius * self.image_size), kind, radius


class SyntheticImageClassificationDataset(_OneShape):
    """One small shape per image; the label is its type. Samples ``{"image", "label"}``.

    Args:
        num_samples: length of the dataset.
        num_classes: shape types, in ``[2, len(SHAPES)]``; label ``c`` is ``SHAPES[c]``.
        image_size: side of the square images.
        seed: base seed; sample ``i`` depends only on ``(seed, split, i)``.
        split: which split this is (splits draw different samples).
        radius_range: range of the circumradius, as fractions of the image side.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int = 4,
        image_size: int = 96,
        seed: int = 0,
        split: Split = "train",
        radius_range: tuple[float, float] = (0.06, 0.16),
    ) -> None:
        check_range("num_classes", num_classes, 2, len(SHAPES))
        super().__init__(num_samples, num_classes, image_size, seed, split, radius_range)
        self.num_classes = num_classes

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, kind, _ = self.draw(index)
        return {"image": image_to_tensor(image), "label": torch.tensor(kind, dtype=torch.int64)}


class SyntheticImageRegressionDataset(_OneShape):
    """One shape per image; the target is its size. Samples ``{"image", "target"}``.

    The target is the circumradius in percent of the image side (float32), so it does not
    change with ``image_size``.

    Args:
        num_samples: length of the dataset.
        num_kinds: shape types drawn, the first ``num_kinds`` of ``SHAPES``.
        image_size: side of the square images.
        seed: base seed; sample ``i`` depends only on ``(seed, split, i)``.
        split: which split this is (splits draw different samples).
        radius_range: range of the circumradius, as fractions of the image side.
    """

    def __init__(
        self,
        num_samples: int,
        num_kinds: int = len(SHAPES),
        image_size: int = 96,
        seed: int = 0,
        split: Split = "train",
        radius_range: tuple[float, float] = (0.08, 0.3),
    ) -> None:
        super().__init__(num_samples, num_kinds, image_size, seed, split, radius_range)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, _, radius = self.draw(index)
        target = torch.tensor(100.0 * radius, dtype=torch.float32)
        return {"image": image_to_tensor(image), "target": target}


class SyntheticImageClassificationDataModule(SyntheticDataModule):
    """Synthetic one-shape images, labelled by the shape's type; batches ``{"image", "label"}``.

    Args:
        num_classes: shape types, in ``[2, len(SHAPES)]``; label ``c`` is ``SHAPES[c]``.
        image_size: side of the square images.
        num_train: training samples.
        num_val: validation samples.
        num_test: test samples.
        num_predict: prediction samples.
        batch_size: samples per batch.
        num_workers: dataloader workers.
        seed: base seed of every split.
        radius_min: smallest circumradius, as a fraction of the image side.
        radius_max: largest circumradius, as a fraction of the image side.
    """

    def __init__(
        self,
        num_classes: int = 4,
        image_size: int = 96,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        num_predict: int = 16,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        radius_min: float = 0.06,
        radius_max: float = 0.16,
    ) -> None:
        super().__init__(
            image_size, num_train, num_val, num_test, num_predict, batch_size, num_workers, seed
        )
        self.save_hyperparameters()
        check_range("num_classes", num_classes, 2, len(SHAPES))
        self.radius_range = check_radius_range(radius_min, radius_max, image_size)
        self.num_classes = num_classes
        self.class_names = list(SHAPES[:num_classes])

    def build_dataset(self, split: Split) -> SyntheticImageClassificationDataset:
        """Build the synthetic classification dataset of ``split``."""
        return SyntheticImageClassificationDataset(
            self.split_sizes[split],
            self.num_classes,
            self.image_size,
            self.seed,
            split,
            self.radius_range,
        )


class SyntheticImageRegressionDataModule(SyntheticDataModule):
    """Synthetic one-shape images; the target is the shape's size. Batches ``{"image", "target"}``.

    The target, a stand-in for apparent age, is the shape's circumradius in percent of the
    image side: uniform in ``[100 * radius_min, 100 * radius_max]`` (8 to 30 by default),
    with mean :attr:`target_mean` and standard deviation :attr:`target_std`.

    Args:
        num_kinds: shape types drawn (the first ``num_kinds`` of ``SHAPES``), whatever the size.
        image_size: side of the square images.
        num_train: training samples.
        num_val: validation samples.
        num_test: test samples.
        num_predict: prediction samples.
        batch_size: samples per batch.
        num_workers: dataloader workers.
        seed: base seed of every split.
        radius_min: smallest circumradius, as a fraction of the image side.
        radius_max: largest circumradius, as a fraction of the image side.
    """

    def __init__(
        self,
        num_kinds: int = len(SHAPES),
        image_size: int = 96,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        num_predict: int = 16,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        radius_min: float = 0.08,
        radius_max: float = 0.3,
    ) -> None:
        super().__init__(
            image_size, num_train, num_val, num_test, num_predict, batch_size, num_workers, seed
        )
        self.save_hyperparameters()
        check_range("num_kinds", num_kinds, 1, len(SHAPES))
        self.radius_range = check_radius_range(radius_min, radius_max, image_size)
        self.num_kinds = num_kinds
        low, high = (100.0 * r for r in self.radius_range)
        #: Mean and standard deviation of the target's distribution (uniform), for a task's
        #: ``target_mean`` / ``target_scale``.
        self.target_mean = (low + high) / 2
        self.target_std = (high - low) / 12**0.5

    def build_dataset(self, split: Split) -> SyntheticImageRegressionDataset:
        """Build the synthetic regression dataset of ``split``."""
        return SyntheticImageRegressionDataset(
            self.split_sizes[split],
            self.num_kinds,
            self.image_size,
            self.seed,
            split,
            self.radius_range,
        )
