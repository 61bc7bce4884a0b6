"""DataModules over local COCO-format detection and keypoint annotations (no downloads).

Paths of annotation files and image folders are relative to ``root`` (absolute paths work too).
The training annotation file is the source of truth for the label set and keypoint metadata:
reading ``num_classes`` or ``keypoint_names`` loads it once (cached, and reused by ``setup``),
so the attributes are available before ``setup`` for linking into a task.

The layout (root, annotation files, image folders) is checked when a DataModule is built and,
with ``verify=True`` (the default), every image file of every split too: missing, unreadable
or of another size than its annotation file says, all reported in one
:class:`~dense_lightning.data.verify.DatasetError` before a Trainer or logger exists.
Annotation errors (bad boxes, keypoints, categories) are found when a split's dataset is built
and name the annotation id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from dense_lightning.data.base import (
    BaseDataModule,
    Split,
    check_range,
    check_scale_range,
    collate_instances,
)
from dense_lightning.data.coco import (
    COCODetectionDataset,
    COCOKeypointsDataset,
    check_coco_images,
    keypoint_category,
    keypoint_flip_pairs,
    keypoint_skeleton,
    load_coco,
)
from dense_lightning.data.verify import FileProblems, is_local_leader, missing_layout

__all__ = ["COCODataModule", "COCODetectionDataModule", "COCOKeypointsDataModule"]


class COCODataModule(BaseDataModule):
    """Split bookkeeping, file checks and cached annotation loading of the COCO DataModules.

    ``test`` falls back to the validation annotations and images when ``test_ann`` is None;
    ``predict`` uses the ``test`` files. Only ``train`` is augmented.

    Raises:
        MissingDataError: the root, an annotation file or an image folder does not exist.
        DatasetError: ``verify`` found bad image files.
    """

    def __init__(
        self,
        root: str,
        train_ann: str,
        val_ann: str,
        test_ann: str | None,
        train_images: str,
        val_images: str,
        test_images: str | None,
        image_size: int,
        batch_size: int,
        num_workers: int,
        augment: bool,
        scale_min: float,
        scale_max: float,
        verify: bool,
        pin_memory: bool,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        check_range("image_size", image_size, 1)
        self.root = root
        self.image_size = image_size
        self.augment = augment
        self.scale_range = check_scale_range(scale_min, scale_max)
        test = (test_ann or val_ann, test_images or val_images)
        self.split_files: dict[Split, tuple[str, str]] = {
            "train": (train_ann, train_images),
            "val": (val_ann, val_images),
            "test": test,
            "predict": test,
        }
        self._cocos: dict[Path, COCO] = {}
        self._check_layout()
        # One check per machine: the other processes of a multi-GPU launch read the same files.
        if verify and is_local_leader():
            self.check_files()

    def _check_layout(self) -> None:
        expected: dict[str, str] = {}
        for split, (ann, images) in self.split_files.items():
            expected.setdefault(ann, f"{split} annotation file")
            expected.setdefault(f"{images}/", f"{split} image folder")
        missing_layout(Path(self.root), expected, "a COCO-style folder")

    def check_files(self) -> None:
        """Check every image file of every split; raise one error listing all bad files.

        Raises:
            DatasetError: an annotation file is invalid, or bad image files were found (see
                :func:`~dense_lightning.data.coco.check_coco_images`).
        """
        root = Path(self.root)
        problems = FileProblems(root, "COCO-style folder")
        seen: set[tuple[str, str]] = set()
        for split, files in self.split_files.items():
            if files not in seen:  # test and predict usually reuse the val files
                seen.add(files)
                check_coco_images(self.coco(split), root / files[1], problems)
        problems.raise_if_any()

    def ann_path(self, split: Split) -> Path:
        """The annotation file of ``split``."""
        return Path(self.root) / self.split_files[split][0]

    def coco(self, split: Split) -> COCO:
        """The loaded annotations of ``split``, cached per file."""
        path = self.ann_path(split)
        if path not in self._cocos:
            self._cocos[path] = load_coco(path)
        return self._cocos[path]


class COCODetectionDataModule(COCODataModule):
    """Object detection from COCO JSON; batches via :func:`collate_instances`.

    Labels are contiguous, ``0 .. num_classes - 1``, in order of the sorted category ids of the
    training file (``category_ids[label]`` maps back). See :mod:`dense_lightning.data.coco`
    for how samples map back to the original images (``image_id``, ``orig_size``, ``scale``).

    Args:
        root: dataset root.
        train_ann: training annotation file.
        val_ann: validation annotation file.
        test_ann: test annotation file; ``None`` uses ``val_ann``.
        train_images: folder of training images.
        val_images: folder of validation images.
        test_images: folder of test images; ``None`` uses ``val_images``.
        image_size: side of the square samples (letterboxed).
        batch_size: samples per batch.
        num_workers: dataloader workers.
        augment: random scale, crop and horizontal flip for training.
        scale_min: smallest training scale (1.0 = letterbox size).
        scale_max: largest training scale.
        verify: check every image file of every split when the module is built (exists,
            decodes, has the size its annotation file gives) and raise one error listing all
            bad files; ``False`` skips it (the layout is still checked).
        pin_memory: pin host memory of batches.
    """

    collate_fn = staticmethod(collate_instances)

    def __init__(
        self,
        root: str,
        train_ann: str = "annotations/instances_train2017.json",
        val_ann: str = "annotations/instances_val2017.json",
        test_ann: str | None = None,
        train_images: str = "train2017",
        val_images: str = "val2017",
        test_images: str | None = None,
        image_size: int = 512,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: bool = True,
        scale_min: float = 0.75,
        scale_max: float = 1.25,
        verify: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            train_ann=train_ann,
            val_ann=val_ann,
            test_ann=test_ann,
            train_images=train_images,
            val_images=val_images,
            test_images=test_images,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            scale_min=scale_min,
            scale_max=scale_max,
            verify=verify,
            pin_memory=pin_memory,
        )
        self.save_hyperparameters()

    @property
    def category_ids(self) -> list[int]:
        """COCO category id of each contiguous label."""
        return sorted(self.coco("train").cats)

    @property
    def num_classes(self) -> int:
        """Number of object classes (background excluded)."""
        return len(self.category_ids)

    @property
    def class_names(self) -> list[str]:
        """Category name of each label."""
        cats = self.coco("train").cats
        return [cats[c].get("name", str(c)) for c in self.category_ids]

    def build_dataset(self, split: Split) -> COCODetectionDataset:
        """Build and validate the detection dataset of ``split``."""
        ann, images = self.split_files[split]
        return COCODetectionDataset(
            self.root,
            ann,
            images,
            image_size=self.image_size,
            augment=self.augment and split == "train",
            scale_range=self.scale_range,
            category_ids=self.category_ids,
            coco=self.coco(split),
        )


class COCOKeypointsDataModule(COCODataModule):
    """Keypoint estimation from COCO keypoints JSON; batches via :func:`collate_instances`.

    Keypoint names and skeleton come from the keypoint category of the training file (the only
    category with keypoints, or ``category_id``); ``flip_pairs`` pairs ``left_x``/``right_x``
    names unless given. Labels are all 0 (one category).

    Args:
        root: dataset root.
        train_ann: training annotation file.
        val_ann: validation annotation file.
        test_ann: test annotation file; ``None`` uses ``val_ann``.
        train_images: folder of training images.
        val_images: folder of validation images.
        test_images: folder of test images; ``None`` uses ``val_images``.
        image_size: side of the square samples (letterboxed).
        batch_size: samples per batch.
        num_workers: dataloader workers.
        augment: random scale, crop and horizontal flip (swapping left/right) for training.
        scale_min: smallest training scale (1.0 = letterbox size).
        scale_max: largest training scale.
        category_id: the category with keypoints; default the only one that has any.
        flip_pairs: explicit left/right keypoint index pairs.
        verify: check every image file of every split when the module is built (exists,
            decodes, has the size its annotation file gives) and raise one error listing all
            bad files; ``False`` skips it (the layout is still checked).
        pin_memory: pin host memory of batches.
    """

    collate_fn = staticmethod(collate_instances)

    def __init__(
        self,
        root: str,
        train_ann: str = "annotations/person_keypoints_train2017.json",
        val_ann: str = "annotations/person_keypoints_val2017.json",
        test_ann: str | None = None,
        train_images: str = "train2017",
        val_images: str = "val2017",
        test_images: str | None = None,
        image_size: int = 512,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: bool = True,
        scale_min: float = 0.75,
        scale_max: float = 1.25,
        category_id: int | None = None,
        flip_pairs: list[tuple[int, int]] | None = None,
        verify: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            train_ann=train_ann,
            val_ann=val_ann,
            test_ann=test_ann,
            train_images=train_images,
            val_images=val_images,
            test_images=test_images,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            scale_min=scale_min,
            scale_max=scale_max,
            verify=verify,
            pin_memory=pin_memory,
        )
        self.save_hyperparameters()
        self.category_id = category_id
        self._explicit_flip_pairs = flip_pairs
        self.num_classes = 1

    @property
    def category(self) -> dict[str, Any]:
        """The COCO category (of the training file) whose keypoints are estimated."""
        return keypoint_category(self.coco("train"), self.ann_path("train"), self.category_id)

    @property
    def keypoint_names(self) -> list[str]:
        """Names of the keypoints, in order."""
        return list(self.category["keypoints"])

    @property
    def num_keypoints(self) -> int:
        """Keypoints per instance."""
        return len(self.keypoint_names)

    @property
    def skeleton(self) -> list[tuple[int, int]]:
        """0-based keypoint index pairs joined by a bone (COCO stores them 1-based)."""
        return keypoint_skeleton(self.category)

    @property
    def flip_pairs(self) -> list[tuple[int, int]]:
        """Left/right keypoint index pairs swapped by a horizontal flip."""
        return keypoint_flip_pairs(self.keypoint_names, self._explicit_flip_pairs)

    def build_dataset(self, split: Split) -> COCOKeypointsDataset:
        """Build and validate the keypoints dataset of ``split``."""
        ann, images = self.split_files[split]
        dataset = COCOKeypointsDataset(
            self.root,
            ann,
            images,
            image_size=self.image_size,
            augment=self.augment and split == "train",
            scale_range=self.scale_range,
            category_id=self.category["id"],
            flip_pairs=self.flip_pairs,
            coco=self.coco(split),
        )
        if dataset.keypoint_names != self.keypoint_names:
            raise ValueError(
                f"{self.ann_path(split)}: keypoints {dataset.keypoint_names} differ from "
                f"{self.keypoint_names} in {self.ann_path('train')}"
            )
        return dataset
