"""Semantic segmentation from a local VOC-style folder of images and index masks.

Layout (names configurable)::

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png      palette ("P") or greyscale ("L") PNG of class indices
    root/ImageSets/Segmentation/<split>.txt   one <id> per line

Masks hold class indices directly (VOC palette PNGs do); ``ignore_index`` (255 in VOC, the
object borders) is ignored by the loss and metrics. Training samples get a random scale in
``[scale_min, scale_max]`` (relative to fitting the longer side to ``image_size``), a random
``image_size`` crop (padding with the ImageNet mean and ``ignore_index`` where the image is too
small) and a random horizontal flip. Validation and test samples are letterboxed: the longer
side is resized to ``image_size`` and the rest padded with the mean colour and
``ignore_index``, so metrics ignore the padding and are computed at that resolution.

The DataModule checks the layout when it is built and, with ``verify=True`` (the default), every
listed image/mask pair: pairing (a listed image or mask missing, a mask without an image),
readability, mask size against image size and labels against ``num_classes``. All bad files are
reported together in one :class:`~dense_lightning.data.verify.DatasetError`, before a Trainer or
logger exists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from dense_lightning.data.base import (
    BaseDataModule,
    Split,
    check_range,
    check_scale_range,
    load_image,
    require_path,
)
from dense_lightning.data.transforms import letterbox, normalize, random_hflip, random_scale_crop
from dense_lightning.data.verify import (
    MASK_MODES,
    DatasetError,
    FileProblems,
    MissingDataError,
    check_image,
    check_mask,
    is_local_leader,
    map_files,
    missing_layout,
)

__all__ = [
    "SegmentationFolderDataModule",
    "SegmentationFolderDataset",
    "check_segmentation_folder",
    "load_mask",
    "read_split",
]


def load_mask(path: str | Path) -> Tensor:
    """Load a PNG of class indices (palette, greyscale or 16/32-bit integer) as int64 ``[H, W]``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable or holds colours (RGB) instead of indices.
    """
    path = require_path(path, "mask file")
    try:
        with Image.open(path) as img:
            if img.mode not in MASK_MODES:
                raise ValueError(
                    f"{path}: mask must be a palette ('P') or greyscale ('L') PNG of class "
                    f"indices, got mode {img.mode!r}; convert colour masks to indices first"
                )
            array = np.asarray(img, dtype=np.int64)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: cannot read mask ({err})") from err
    return torch.from_numpy(array.copy())


def read_split(split_file: Path) -> list[str]:
    """The image ids listed in a split file, one per non-empty line."""
    return [line.strip() for line in split_file.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class _PairCheck:
    """Checks one image/mask pair (run on a thread pool); returns ``(kind, path, detail)``s."""

    num_classes: int
    ignore_index: int

    def __call__(self, pair: tuple[Path, Path]) -> list[tuple[str, Path, str]]:
        image_path, mask_path = pair
        image, mask = check_image(image_path), check_mask(mask_path)
        found = []
        if isinstance(image, str):
            found.append(("unreadable image", image_path, image))
        if isinstance(mask, str):
            found.append(("unreadable mask", mask_path, mask))
        if isinstance(image, str) or isinstance(mask, str):
            return found
        (height, width), labels = mask
        if (height, width) != image:
            size = f"{height}x{width}, image {image[0]}x{image[1]}"
            found.append(("mask size differs from its image (HxW)", mask_path, size))
        bad = labels[((labels < 0) | (labels >= self.num_classes)) & (labels != self.ignore_index)]
        if bad.size:
            kind = (
                f"label outside [0, num_classes={self.num_classes}) and not "
                f"ignore_index={self.ignore_index}"
            )
            found.append((kind, mask_path, "label " + " ".join(str(v) for v in bad[:5])))
        return found


def check_segmentation_folder(
    root: Path,
    split_files: Sequence[Path],
    num_classes: int,
    ignore_index: int,
    image_dir: str = "JPEGImages",
    mask_dir: str = "SegmentationClass",
    image_ext: str = ".jpg",
    mask_ext: str = ".png",
) -> FileProblems:
    """Check every image/mask pair listed in ``split_files``; all problems, not the first.

    Finds listed images or masks that are missing, masks in ``mask_dir`` without an image,
    files that cannot be decoded (or masks that hold colours rather than class indices),
    masks whose size differs from their image and labels outside ``[0, num_classes)`` other
    than ``ignore_index``. Images are decoded cheaply (JPEG at 1/8 scale); masks fully.

    Args:
        root: dataset root; ``split_files`` and the folders are inside it.
        split_files: split files whose ids are checked (each id once).
        num_classes: labels must be below it or equal ``ignore_index``.
        ignore_index: the label that marks ignored pixels.
        image_dir: folder of images, relative to ``root``.
        mask_dir: folder of masks, relative to ``root``.
        image_ext: image file extension.
        mask_ext: mask file extension.

    Returns:
        The problems found; ``raise_if_any()`` raises them as one ``DatasetError``.
    """
    problems = FileProblems(root, "VOC-style folder")
    images, masks = root / image_dir, root / mask_dir
    ids: dict[str, None] = {}
    for split_file in dict.fromkeys(split_files):
        listed = read_split(split_file)
        if not listed:
            problems.add("split file lists no images", split_file)
        ids.update(dict.fromkeys(listed))
    pairs = []
    for i in ids:
        image, mask = images / f"{i}{image_ext}", masks / f"{i}{mask_ext}"
        problems.first_visit(image)
        if not image.is_file():
            problems.add("listed image missing", image)
        if not mask.is_file():
            problems.add("listed mask missing", mask)
        if image.is_file() and mask.is_file():
            pairs.append((image, mask))
    with os.scandir(masks) as entries:
        mask_names = sorted(e.name for e in entries if e.name.endswith(mask_ext))
    for name in mask_names:
        mask_id = name[: -len(mask_ext)]
        image_name = f"{mask_id}{image_ext}"
        # A listed id without its image is already reported as such.
        if mask_id not in ids and not (images / image_name).is_file():
            problems.add("mask without an image", masks / name, f"no {image_dir}/{image_name}")
    for found in map_files(_PairCheck(num_classes, ignore_index), pairs):
        for kind, path, detail in found:
            problems.add(kind, path, detail)
    return problems


class SegmentationFolderDataset(Dataset):
    """One split of a VOC-style segmentation folder; samples ``{"image", "mask"}``.

    File existence is checked at construction; sizes and labels when a sample is loaded.

    Args:
        root: dataset root.
        split: name of the split file, without ``.txt``.
        image_size: side of the square samples.
        num_classes: number of classes; labels must be below it or equal ``ignore_index``.
        ignore_index: label ignored by losses and metrics; also fills padding.
        augment: random scale, crop and flip (training) instead of the deterministic letterbox.
        scale_range: range of the random scale when ``augment``.
        image_dir: folder of images, relative to ``root``.
        mask_dir: folder of masks, relative to ``root``.
        split_dir: folder of split files, relative to ``root``.
        image_ext: image file extension.
        mask_ext: mask file extension.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int = 512,
        num_classes: int = 21,
        ignore_index: int = 255,
        augment: bool = False,
        scale_range: tuple[float, float] = (0.5, 2.0),
        image_dir: str = "JPEGImages",
        mask_dir: str = "SegmentationClass",
        split_dir: str = "ImageSets/Segmentation",
        image_ext: str = ".jpg",
        mask_ext: str = ".png",
    ) -> None:
        root = require_path(root, "dataset root")
        images, masks = (
            require_path(root / image_dir, "image folder"),
            require_path(root / mask_dir, "mask folder"),
        )
        split_file = require_path(root / split_dir / f"{split}.txt", f"split file of {split!r}")
        ids = read_split(split_file)
        if not ids:
            raise DatasetError(f"{split_file}: split file lists no images")
        self.image_paths = [images / f"{i}{image_ext}" for i in ids]
        self.mask_paths = [masks / f"{i}{mask_ext}" for i in ids]
        for path in (*self.image_paths, *self.mask_paths):
            if not path.is_file():
                raise MissingDataError(f"{path} (listed in {split_file}) not found")
        self.ids = ids
        self.image_size = image_size
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.augment = augment
        self.scale_range = scale_range

    def __len__(self) -> int:
        return len(self.ids)

    def _check_mask(self, index: int, image: Tensor, mask: Tensor) -> None:
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        if image.shape[-2:] != mask.shape:
            raise DatasetError(
                f"size mismatch: image {image_path} is {tuple(image.shape[-2:])} (HxW) but mask "
                f"{mask_path} is {tuple(mask.shape)}"
            )
        labels = torch.unique(mask)
        bad = labels[(labels >= self.num_classes) & (labels != self.ignore_index)]
        if bad.numel() or (labels < 0).any():
            label = int(bad[0]) if bad.numel() else int(labels.min())
            raise DatasetError(
                f"{mask_path}: label {label} is outside [0, num_classes={self.num_classes}) and "
                f"is not ignore_index={self.ignore_index}"
            )

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = load_image(self.image_paths[index])
        mask = load_mask(self.mask_paths[index])
        self._check_mask(index, image, mask)
        sample = {"image": normalize(image), "mask": mask}
        if self.augment:
            sample, _ = random_scale_crop(
                sample, self.image_size, self.scale_range, self.ignore_index
            )
            sample = random_hflip(sample)
        else:
            sample, _ = letterbox(sample, self.image_size, self.ignore_index)
        return {"image": sample["image"].contiguous(), "mask": sample["mask"].contiguous()}


class SegmentationFolderDataModule(BaseDataModule):
    """Semantic segmentation from a local VOC-style folder (see the module docstring).

    Args:
        root: dataset root (e.g. ``.../VOCdevkit/VOC2012``).
        image_size: side of the square samples.
        num_classes: classes including background (21 for VOC).
        batch_size: samples per batch.
        num_workers: dataloader workers.
        ignore_index: label ignored by losses and metrics.
        train_split: split file of training images.
        val_split: split file of validation images.
        test_split: split file of test images.
        predict_split: split file of prediction images; ``None`` uses ``test_split``.
        augment: random scale, crop and flip for training.
        scale_min: smallest training scale.
        scale_max: largest training scale.
        image_dir: folder of images, relative to ``root``.
        mask_dir: folder of masks, relative to ``root``.
        split_dir: folder of split files, relative to ``root``.
        image_ext: image file extension.
        mask_ext: mask file extension.
        verify: check every listed image/mask pair when the module is built (see
            :func:`check_segmentation_folder`) and raise one error listing all bad files;
            ``False`` skips it (the layout is still checked, and a bad file then fails at its
            first batch).
        pin_memory: pin host memory of batches.

    Raises:
        MissingDataError: the root, a folder or a split file does not exist.
        DatasetError: ``verify`` found bad files.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 512,
        num_classes: int = 21,
        batch_size: int = 8,
        num_workers: int = 0,
        ignore_index: int = 255,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        predict_split: str | None = None,
        augment: bool = True,
        scale_min: float = 0.5,
        scale_max: float = 2.0,
        image_dir: str = "JPEGImages",
        mask_dir: str = "SegmentationClass",
        split_dir: str = "ImageSets/Segmentation",
        image_ext: str = ".jpg",
        mask_ext: str = ".png",
        verify: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        self.save_hyperparameters()
        check_range("image_size", image_size, 1)
        check_range("num_classes", num_classes, 2)
        self.scale_range = check_scale_range(scale_min, scale_max)
        self.root = root
        self.image_size = image_size
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.splits: dict[Split, str] = {
            "train": train_split,
            "val": val_split,
            "test": test_split,
            "predict": test_split if predict_split is None else predict_split,
        }
        self.split_files = {
            split: Path(root) / split_dir / f"{name}.txt" for split, name in self.splits.items()
        }
        self._check_layout()
        # One check per machine: the other processes of a multi-GPU launch read the same files.
        if verify and is_local_leader():
            self.check_files()

    def _check_layout(self) -> None:
        hp = self.hparams
        expected = {f"{hp.image_dir}/": "image_dir", f"{hp.mask_dir}/": "mask_dir"}
        for split, name in self.splits.items():
            expected.setdefault(f"{hp.split_dir}/{name}.txt", f"{split} split file")
        missing_layout(Path(self.root), expected, "a VOC-style folder")

    def check_files(self) -> None:
        """Check every image/mask pair of every split; raise one error listing all bad files.

        Raises:
            DatasetError: bad files were found (see :func:`check_segmentation_folder`).
        """
        hp = self.hparams
        check_segmentation_folder(
            Path(self.root),
            list(self.split_files.values()),
            self.num_classes,
            self.ignore_index,
            image_dir=hp.image_dir,
            mask_dir=hp.mask_dir,
            image_ext=hp.image_ext,
            mask_ext=hp.mask_ext,
        ).raise_if_any()

    def build_dataset(self, split: Split) -> SegmentationFolderDataset:
        """Build the folder dataset of ``split``; only ``train`` is augmented."""
        hp = self.hparams
        return SegmentationFolderDataset(
            self.root,
            self.splits[split],
            image_size=self.image_size,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            augment=hp.augment and split == "train",
            scale_range=self.scale_range,
            image_dir=hp.image_dir,
            mask_dir=hp.mask_dir,
            split_dir=hp.split_dir,
            image_ext=hp.image_ext,
            mask_ext=hp.mask_ext,
        )
