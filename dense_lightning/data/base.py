"""Plumbing shared by every DataModule: image loading, batch collation, split bookkeeping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from dense_lightning.data.verify import MissingDataError

__all__ = [
    "SPLITS",
    "BaseDataModule",
    "Split",
    "check_choice",
    "check_range",
    "check_scale_range",
    "collate_instances",
    "load_image",
    "require_path",
]

Split = Literal["train", "val", "test", "predict"]
SPLITS: tuple[Split, ...] = get_args(Split)
_STAGE_SPLITS: dict[str, tuple[Split, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("predict",),
}
# Per-instance fields differ in length between images, so they are batched as lists.
_LIST_KEYS = frozenset({"boxes", "labels", "keypoints"})


def check_range(name: str, value: int, low: int, high: int | None = None) -> None:
    """Raise ``ValueError`` unless ``low <= value`` (and ``value <= high`` when given)."""
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def check_choice(name: str, value: object, choices: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is one of the values of the ``Literal`` ``choices``."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")


def check_scale_range(scale_min: float, scale_max: float) -> tuple[float, float]:
    """Return ``(scale_min, scale_max)`` after checking ``0 < scale_min <= scale_max``."""
    if not 0 < scale_min <= scale_max:
        raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min} and {scale_max}")
    return scale_min, scale_max


def require_path(path: str | Path, what: str) -> Path:
    """Return ``path`` as a ``Path`` or raise ``MissingDataError`` naming it and its role.

    ``MissingDataError`` is both a ``FileNotFoundError`` and a ``ValueError``.
    """
    path = Path(path)
    if not path.exists():
        raise MissingDataError(f"{what} not found: {path}")
    return path


def load_image(path: str | Path) -> Tensor:
    """Load an image file with PIL as float32 RGB ``[3, H, W]`` in ``[0, 1]``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: PIL cannot decode it; the message names the file.
    """
    path = require_path(path, "image file")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def collate_instances(batch: Sequence[dict[str, Tensor]]) -> dict[str, Any]:
    """Batch detection or keypoint samples: per-instance fields as per-image lists.

    ``boxes``, ``labels`` and ``keypoints`` (their length differs between images) stay lists;
    every other key (``image``, ``image_id``, ``orig_size``, ``scale``) is stacked by
    ``default_collate``.
    """
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [sample[key] for sample in batch]
        out[key] = values if key in _LIST_KEYS else default_collate(values)
    return out


class BaseDataModule(LightningDataModule):
    """A DataModule whose subclasses only say how to build the dataset of one split.

    Subclasses call ``save_hyperparameters()`` in their own ``__init__`` and implement
    :meth:`build_dataset`. Datasets are built lazily, once, by :meth:`setup` (or by the first
    dataloader that needs them), so a module works outside a ``Trainer`` too.

    Args:
        batch_size: samples per batch, for every split.
        num_workers: dataloader worker processes.
        pin_memory: pin host memory of batches (useful with CUDA).
    """

    collate_fn: ClassVar[Callable[[Sequence[dict[str, Tensor]]], Any] | None] = None

    def __init__(self, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        check_range("batch_size", batch_size, 1)
        check_range("num_workers", num_workers, 0)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.datasets: dict[Split, Dataset] = {}

    def build_dataset(self, split: Split) -> Dataset:
        """Build the dataset of ``split`` (one of ``train``, ``val``, ``test``, ``predict``)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` needs (all of them when ``stage`` is None)."""
        if stage is not None and stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(_STAGE_SPLITS)}")
        for split in SPLITS if stage is None else _STAGE_SPLITS[stage]:
            self.dataset(split)

    def dataset(self, split: Split) -> Dataset:
        """The dataset of ``split``, built on first use."""
        if split not in self.datasets:
            self.datasets[split] = self.build_dataset(split)
        return self.datasets[split]

    def _dataloader(self, split: Split) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=split == "train",
            num_workers=self.num_workers,
            collate_fn=type(self).collate_fn,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._dataloader("train")

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in dataset order."""
        return self._dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches, in dataset order."""
        return self._dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        """Prediction batches, in dataset order; they carry the same keys as test batches."""
        return self._dataloader("predict")
