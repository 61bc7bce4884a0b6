"""Seeded synthetic shapes for segmentation and detection: the built-in default data.

Each image is a textured background (smooth colour noise, stripes or a gradient, plus pixel
noise) with one to ``max_objects`` shapes of random colour, size and position; the class of a
shape is its type (:data:`~dense_lightning.data.shapes.SHAPES`: disc, square, triangle, ring,
cross, diamond). Sample ``i`` of a split is a pure function of ``(seed, split, i)``, so it is
the same in every worker and process. With equal ``seed`` and shape set, segmentation sample
``i`` (``num_classes = C + 1``) and detection sample ``i`` (``num_classes = C``) show the same
scene.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dense_lightning.data.base import (
    SPLITS,
    BaseDataModule,
    Split,
    check_choice,
    check_range,
    collate_instances,
)
from dense_lightning.data.shapes import SHAPES, PlacedShape, render_scene
from dense_lightning.data.transforms import normalize

__all__ = [
    "MIN_IMAGE_SIZE",
    "SyntheticDataModule",
    "SyntheticDetectionDataModule",
    "SyntheticDetectionDataset",
    "SyntheticSegmentationDataModule",
    "SyntheticSegmentationDataset",
    "box_of",
    "image_to_tensor",
    "sample_rng",
]

MIN_IMAGE_SIZE = 16


def sample_rng(seed: int, split: Split, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: independent of workers and order."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def image_to_tensor(image: np.ndarray) -> Tensor:
    """Convert a float ``[H, W, 3]`` array in ``[0, 1]`` to a normalised ``[3, H, W]`` tensor."""
    return normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float())


def box_of(mask: np.ndarray) -> list[float]:
    """Tight xyxy box of a boolean mask in continuous pixel coordinates."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


class _SyntheticShapes(Dataset):
    """Shared indexing and rendering of the shape datasets."""

    def __init__(
        self,
        num_samples: int,
        num_kinds: int,
        image_size: int,
        seed: int,
        split: Split,
        max_objects: int,
    ) -> None:
        check_range("num_samples", num_samples, 0)
        check_range("image_size", image_size, MIN_IMAGE_SIZE)
        check_range("max_objects", max_objects, 1)
        check_choice("split", split, Split)
        self.num_samples = num_samples
        self.num_kinds = num_kinds
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.max_objects = max_objects

    def __len__(self) -> int:
        return self.num_samples

    def render(self, index: int) -> tuple[np.ndarray, list[PlacedShape]]:
        """The raw scene of sample ``index``: float image ``[H, W, 3]`` and its shapes."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = sample_rng(self.seed, self.split, index)
        return render_scene(rng, self.image_size, self.num_kinds, self.max_objects)


class SyntheticSegmentationDataset(_SyntheticShapes):
    """Shapes with their exact class mask; class 0 is background, class ``c`` is ``SHAPES[c-1]``.

    Args:
        num_samples: length of the dataset.
        num_classes: classes including background, in ``[2, len(SHAPES) + 1]``.
        image_size: side of the square images.
        seed: base seed; sample ``i`` depends only on ``(seed, split, i)``.
        split: which split this is (splits draw different samples).
        max_objects: most shapes per image.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int = 4,
        image_size: int = 64,
        seed: int = 0,
        split: Split = "train",
        max_objects: int = 4,
    ) -> None:
        check_range("num_classes", num_classes, 2, len(SHAPES) + 1)
        super().__init__(num_samples, num_classes - 1, image_size, seed, split, max_objects)
        self.num_classes = num_classes

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, shapes = self.render(index)
        mask = np.zeros(image.shape[:2], dtype=np.int64)
        for shape in shapes:
            mask[shape.mask] = shape.kind + 1
        return {"image": image_to_tensor(image), "mask": torch.from_numpy(mask)}


class SyntheticDetectionDataset(_SyntheticShapes):
    """Shapes with tight boxes; label ``c`` is ``SHAPES[c]`` (no background label).

    Samples carry ``image``, ``boxes``, ``labels``, ``image_id`` (the index), ``orig_size``
    ``(H, W)`` and ``scale`` ``(1, 1)``, the same keys as the COCO datasets.

    Args:
        num_samples: length of the dataset.
        num_classes: object classes, in ``[1, len(SHAPES)]``.
        image_size: side of the square images.
        seed: base seed; sample ``i`` depends only on ``(seed, split, i)``.
        split: which split this is (splits draw different samples).
        max_objects: most shapes per image.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int = 3,
        image_size: int = 64,
        seed: int = 0,
        split: Split = "train",
        max_objects: int = 4,
    ) -> None:
        check_range("num_classes", num_classes, 1, len(SHAPES))
        super().__init__(num_samples, num_classes, image_size, seed, split, max_objects)
        self.num_classes = num_classes

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, shapes = self.render(index)
        boxes = torch.tensor([box_of(s.mask) for s in shapes], dtype=torch.float32)
        return {
            "image": image_to_tensor(image),
            "boxes": boxes.reshape(-1, 4),
            "labels": torch.tensor([s.kind for s in shapes], dtype=torch.int64),
            "image_id": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor([self.image_size, self.image_size], dtype=torch.int64),
            "scale": torch.ones(2, dtype=torch.float32),
        }


class SyntheticDataModule(BaseDataModule):
    """Split sizes and seeding shared by the synthetic DataModules."""

    def __init__(
        self,
        image_size: int,
        num_train: int,
        num_val: int,
        num_test: int,
        num_predict: int,
        batch_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        check_range("image_size", image_size, MIN_IMAGE_SIZE)
        self.image_size = image_size
        self.seed = seed
        self.split_sizes: dict[Split, int] = {
            "train": num_train,
            "val": num_val,
            "test": num_test,
            "predict": num_predict,
        }
        for split, size in self.split_sizes.items():
            check_range(f"num_{split}", size, 0)


class SyntheticSegmentationDataModule(SyntheticDataModule):
    """Synthetic shapes for semantic segmentation; batches ``{"image", "mask"}``.

    Args:
        num_classes: classes including background (class 0), at most ``len(SHAPES) + 1``.
        image_size: side of the square images.
        num_train: training samples.
        num_val: validation samples.
        num_test: test samples.
        num_predict: prediction samples.
        batch_size: samples per batch.
        num_workers: dataloader workers.
        seed: base seed of every split.
        max_objects: most shapes per image.
    """

    def __init__(
        self,
        num_classes: int = 4,
        image_size: int = 64,
        num_train: int = 256,
        num_val: int = 64,
        num_test: int = 64,
        num_predict: int = 16,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        max_objects: int = 4,
    ) -> None:
        super().__init__(
            image_size, num_train, num_val, num_test, num_predict, batch_size, num_workers, seed
        )
        self.save_hyperparameters()
        check_range("num_classes", num_classes, 2, len(SHAPES) + 1)
        check_range("max_objects", max_objects, 1)
        self.num_classes = num_classes
        self.max_objects = max_objects
        self.ignore_index = 255
        self.class_names = ["background", *SHAPES[: num_classes - 1]]

    def build_dataset(self, split: Split) -> SyntheticSegmentationDataset:
        """Build the synthetic segmentation dataset of ``split``."""
        return SyntheticSegmentationDataset(
            self.split_sizes[split],
            self.num_classes,
            self.image_size,
            self.seed,
            split,
            self.max_objects,
        )


class SyntheticDetectionDataModule(SyntheticDataModule):
    """Synthetic shapes for object detection; batches via :func:`collate_instances`.

    Args:
        num_classes: object classes (background excluded), at most ``len(SHAPES)``.
        image_size: side of the square images.
        num_train: training samples.
        num_val: validation samples.
        num_test: test samples.
        num_predict: prediction samples.
        batch_size: samples per batch.
        num_workers: dataloader workers.
        seed: base seed of every split.
        max_objects: most shapes per image.
    """

    collate_fn = staticmethod(collate_instances)

    def __init__(
        self,
        num_classes: int = 3,
        image_size: int = 64,
        num_train: int = 256,
        num_val: int = 64,
        num_test: int = 64,
        num_predict: int = 16,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        max_objects: int = 4,
    ) -> None:
        super().__init__(
            image_size, num_train, num_val, num_test, num_predict, batch_size, num_workers, seed
        )
        self.save_hyperparameters()
        check_range("num_classes", num_classes, 1, len(SHAPES))
        check_range("max_objects", max_objects, 1)
        self.num_classes = num_classes
        self.max_objects = max_objects
        self.class_names = list(SHAPES[:num_classes])

    def build_dataset(self, split: Split) -> SyntheticDetectionDataset:
        """Build the synthetic detection dataset of ``split``."""
        return SyntheticDetectionDataset(
            self.split_sizes[split],
            self.num_classes,
            self.image_size,
            self.seed,
            split,
            self.max_objects,
        )
