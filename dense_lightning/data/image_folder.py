"""Image classification from a local folder with one sub-folder per class (torchvision ImageFolder).

Layout (split names configurable)::

    root/train/<class>/<image>.jpg      any depth below the class folder; .jpg, .jpeg, .png
    root/val/<class>/<image>.png
    root/test/<class>/...               only when test_split names it

The class names are the sub-folder names, sorted; label ``c`` is ``class_names[c]``. Every
split must have the same class folders. Samples are resized as in the segmentation folder
module: training samples get a random scale in ``[scale_min, scale_max]`` (relative to
fitting the longer side to ``image_size``), a random ``image_size`` crop and a random
horizontal flip; the others are letterboxed (longer side resized to ``image_size``, the rest
padded with the ImageNet mean colour).

The DataModule checks the layout when it is built (the root and split folders exist, each
split has class folders, the same ones) and, with ``verify=True`` (the default), every file:
empty class folders, images outside a class folder and images that cannot be decoded are
reported together in one :class:`~dense_lightning.data.verify.DatasetError`, before a
Trainer or logger exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
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
    DatasetError,
    FileProblems,
    check_image,
    is_local_leader,
    map_files,
    missing_layout,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderClassificationDataModule",
    "ImageFolderClassificationDataset",
    "check_class_folders",
    "class_folders",
    "fit_image",
    "image_files",
    "split_names",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
_LAYOUT = "an image folder (<split>/<class>/<image>)"


def fit_image(
    image: Tensor, image_size: int, augment: bool, scale_range: tuple[float, float]
) -> Tensor:
    """Normalise an image in ``[0, 1]`` and bring it to ``image_size`` squared.

    With ``augment``: random scale, crop and horizontal flip; otherwise a letterbox.
    """
    sample = {"image": normalize(image)}
    if augment:
        sample, _ = random_scale_crop(sample, image_size, scale_range)
        sample = random_hflip(sample)
    else:
        sample, _ = letterbox(sample, image_size)
    return sample["image"].contiguous()


def split_names(
    train_split: str, val_split: str, test_split: str, predict_split: str | None
) -> dict[Split, str]:
    """The split names of the four stages; ``predict`` falls back to ``test``."""
    return {
        "train": train_split,
        "val": val_split,
        "test": test_split,
        "predict": test_split if predict_split is None else predict_split,
    }


def image_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Files below ``folder`` (any depth) whose suffix is one of ``extensions``, sorted."""
    allowed = {e.lower() for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in allowed and p.is_file())


def class_folders(split_dir: Path) -> list[str]:
    """The class folder names of one split, sorted (hidden folders are skipped)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _same_classes(root: Path, found: dict[str, list[str]]) -> list[str]:
    """The class names every split shares; raises naming the splits that differ."""
    first, classes = next(iter(found.items()))
    for name, other in found.items():
        if not other:
            raise DatasetError(
                f"image folder {root}: {root / name} has no class folders; expected "
                f"{root / name}/<class>/<image>, one sub-folder per class"
            )
        if other != classes:
            lacks = sorted(set(classes) - set(other))
            extra = sorted(set(other) - set(classes))
            parts = [f"lacks {lacks}"] if lacks else []
            parts += [f"has {extra} that {first!r} lacks"] if extra else []
            what = "; ".join(parts)
            raise DatasetError(
                f"image folder {root}: split {name!r} ({root / name}) {what}; every split needs "
                f"the same class folders (those of {first!r}: {classes})"
            )
    return classes


def check_class_folders(
    root: Path, splits: Sequence[str], extensions: Sequence[str], verify: bool = True
) -> tuple[list[str], FileProblems]:
    """Check the class folders of ``splits`` under ``root``; the classes and the problems found.

    Raises at once when a split has no class folders or the splits' classes differ. With
    ``verify``, also collects empty class folders, images outside a class folder and images
    that cannot be decoded (JPEG decoded at 1/8 scale).

    Returns:
        The sorted class names and the problems (``raise_if_any()`` raises them).
    """
    names = list(dict.fromkeys(splits))
    classes = _same_classes(root, {name: class_folders(root / name) for name in names})
    problems = FileProblems(root, "image folder")
    if not verify:
        return classes, problems
    files = []
    allowed = {e.lower() for e in extensions}
    for name in names:
        for stray in sorted((root / name).iterdir()):
            if stray.is_file() and stray.suffix.lower() in allowed:
                problems.add("image outside a class folder", stray, f"move it into {name}/<class>/")
        for cls in classes:
            found = image_files(root / name / cls, extensions)
            if not found:
                problems.add("class folder holds no images", root / name / cls, "/".join(allowed))
            for path in found:
                problems.first_visit(path)
            files += found
    for path, result in zip(files, map_files(check_image, files), strict=True):
        if isinstance(result, str):
            problems.add("unreadable image", path, result)
    return classes, problems


class ImageFolderClassificationDataset(Dataset):
    """One split of a class-per-folder image folder; samples ``{"image", "label"}``.

    Args:
        root: dataset root.
        split: the split's folder name under ``root``.
        class_names: the classes, in label order; ``None`` takes the split's folders, sorted.
        image_size: side of the square samples.
        augment: random scale, crop and flip (training) instead of the letterbox.
        scale_range: range of the random scale when ``augment``.
        extensions: image file suffixes (case-insensitive).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str] | None = None,
        image_size: int = 224,
        augment: bool = False,
        scale_range: tuple[float, float] = (0.8, 1.25),
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        split_dir = require_path(Path(root) / split, f"folder of split {split!r}")
        self.class_names = list(class_folders(split_dir) if class_names is None else class_names)
        self.samples: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.class_names):
            folder = require_path(split_dir / cls, f"class folder {cls!r} of split {split!r}")
            self.samples += [(path, label) for path in image_files(folder, extensions)]
        if not self.samples:
            raise DatasetError(f"{split_dir}: no images in the class folders {self.class_names}")
        self.image_size = image_size
        self.augment = augment
        self.scale_range = scale_range

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        path, label = self.samples[index]
        image = fit_image(load_image(path), self.image_size, self.augment, self.scale_range)
        return {"image": image, "label": torch.tensor(label, dtype=torch.int64)}


class ImageFolderClassificationDataModule(BaseDataModule):
    """Image classification from a local folder, one sub-folder per class; batches image, label.

    ``num_classes`` and ``class_names`` come from the folders; the CLI checks them against
    the task's ``num_classes`` before anything runs.

    Args:
        root: dataset root, holding one folder per split.
        image_size: side of the square samples.
        batch_size: samples per batch.
        num_workers: dataloader workers.
        train_split: folder of training images.
        val_split: folder of validation images.
        test_split: folder of test images.
        predict_split: folder of prediction images; ``None`` uses ``test_split``.
        augment: random scale, crop and flip for training.
        scale_min: smallest training scale.
        scale_max: largest training scale.
        extensions: image file suffixes (case-insensitive).
        verify: check every file when the module is built (empty class folders, images
            outside a class folder, images that cannot be decoded) and raise one error listing
            all bad files; ``False`` skips it (the layout and the class folders are still
            checked).
        pin_memory: pin host memory of batches.

    Raises:
        MissingDataError: the root or a split folder does not exist.
        DatasetError: the splits' class folders differ, or bad files were found.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        predict_split: str | None = None,
        augment: bool = True,
        scale_min: float = 0.8,
        scale_max: float = 1.25,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        verify: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        self.save_hyperparameters()
        check_range("image_size", image_size, 1)
        self.scale_range = check_scale_range(scale_min, scale_max)
        self.root = root
        self.image_size = image_size
        self.extensions = tuple(extensions)
        self.splits = split_names(train_split, val_split, test_split, predict_split)
        expected: dict[str, str] = {}
        for split, name in self.splits.items():  # a folder shared by splits: its first role
            expected.setdefault(f"{name}/", f"{split} split folder")
        missing_layout(Path(root), expected, _LAYOUT)
        # One decoding pass per machine: a multi-GPU launch's processes read the same files.
        classes, problems = check_class_folders(
            Path(root), list(self.splits.values()), self.extensions, verify and is_local_leader()
        )
        problems.raise_if_any()
        self.class_names = classes
        self.num_classes = len(classes)
        if self.num_classes < 2:
            raise DatasetError(
                f"image folder {root}: one class folder ({classes}); classification needs two "
                "or more"
            )

    def build_dataset(self, split: Split) -> ImageFolderClassificationDataset:
        """Build the dataset of ``split``; only ``train`` is augmented."""
        return ImageFolderClassificationDataset(
            self.root,
            self.splits[split],
            class_names=self.class_names,
            image_size=self.image_size,
            augment=self.hparams.augment and split == "train",
            scale_range=self.scale_range,
            extensions=self.extensions,
        )
