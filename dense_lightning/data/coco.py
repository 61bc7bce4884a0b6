"""COCO-format detection and keypoint datasets read from a local JSON file and image folder.

Annotations are validated when a dataset is built, so bad data fails before training, with a
message naming the file and the annotation id. ``iscrowd`` annotations are skipped.

Mapping predictions back for COCO evaluation: every sample carries ``image_id`` (the COCO
image id), ``orig_size`` (int64 ``(H, W)`` of the file) and ``scale`` (float32 ``(sx, sy)``).
Evaluation samples are letterboxed (longer side resized to ``image_size``, padding at the
bottom/right), so ``x_orig = x / sx`` and ``y_orig = y / sy`` exactly; contiguous labels map
back through ``dataset.category_ids[label]``, and ``dataset.coco`` is the pycocotools ``COCO``
object for ``COCOeval``. Training samples (augmented) report their random resize factors but
not the crop offset or flip. Coordinates are continuous (a flip maps x to ``W - x``); COCO
keypoint coordinates are used as they are, without a half-pixel shift.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from dense_lightning.data.base import load_image, require_path
from dense_lightning.data.transforms import (
    flip_pairs_from_names,
    letterbox,
    normalize,
    random_hflip,
    random_scale_crop,
)
from dense_lightning.data.verify import (
    DatasetError,
    FileProblems,
    MissingDataError,
    check_image,
    map_files,
)

__all__ = [
    "COCODetectionDataset",
    "COCOKeypointsDataset",
    "check_coco_images",
    "keypoint_category",
    "keypoint_flip_pairs",
    "keypoint_skeleton",
    "load_coco",
]

_REQUIRED = {"images": ("id", "file_name"), "annotations": ("id", "image_id", "category_id")}


def load_coco(path: str | Path) -> COCO:
    """Load and index a COCO JSON file quietly, checking the fields the index relies on.

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: invalid JSON, or an entry lacks a required field (named with the file).
    """
    path = require_path(path, "COCO annotation file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with images/annotations/categories")
    for section in ("images", "annotations", "categories"):
        if not isinstance(data.get(section), list):
            raise DatasetError(f"{path}: missing list {section!r}")
    for section, fields in (*_REQUIRED.items(), ("categories", ("id",))):
        for i, entry in enumerate(data[section]):
            missing = [f for f in fields if f not in entry]
            if missing:
                name = f"id {entry['id']}" if "id" in entry else f"#{i}"
                raise DatasetError(f"{path}: {section[:-1]} {name} lacks {missing}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def keypoint_category(coco: COCO, path: Path, category_id: int | None = None) -> dict[str, Any]:
    """The category whose keypoints are estimated: ``category_id`` or the only one with any."""
    with_kps = {cid: cat for cid, cat in coco.cats.items() if cat.get("keypoints")}
    if category_id is not None:
        if category_id not in with_kps:
            raise DatasetError(f"{path}: category {category_id} does not exist or has no keypoints")
        return with_kps[category_id]
    if len(with_kps) != 1:
        raise DatasetError(
            f"{path}: expected exactly one category with keypoints, found {sorted(with_kps)}; "
            "pass category_id"
        )
    return next(iter(with_kps.values()))


def keypoint_skeleton(category: dict[str, Any]) -> list[tuple[int, int]]:
    """0-based keypoint index pairs joined by a bone (COCO stores them 1-based)."""
    return [(int(a) - 1, int(b) - 1) for a, b in category.get("skeleton", [])]


def keypoint_flip_pairs(
    names: Sequence[str], flip_pairs: Sequence[Sequence[int]] | None = None
) -> list[tuple[int, int]]:
    """Left/right index pairs swapped by a horizontal flip: ``flip_pairs`` or paired names."""
    if flip_pairs is None:
        return flip_pairs_from_names(names)
    return [(int(a), int(b)) for a, b in flip_pairs]


def check_coco_images(
    coco: COCO, image_dir: Path, problems: FileProblems | None = None
) -> FileProblems:
    """Check every image file named by ``coco``: it exists, decodes and has the listed size.

    Images are decoded cheaply (JPEG at 1/8 scale) on a thread pool; all problems are
    collected, not the first.

    Args:
        coco: the loaded annotation file.
        image_dir: folder that ``file_name`` is relative to.
        problems: report to add to (several splits in one report); default a new one.

    Returns:
        The report; ``raise_if_any()`` raises its problems as one ``DatasetError``.
    """
    problems = FileProblems(image_dir, "COCO images") if problems is None else problems
    present = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        path = image_dir / info["file_name"]
        if not problems.first_visit(path):
            continue
        if path.is_file():
            present.append((info, path))
        else:
            problems.add("image file missing", path, f"image {info['id']}")
    for (info, path), size in zip(
        present, map_files(check_image, [path for _, path in present]), strict=True
    ):
        if isinstance(size, str):
            problems.add("unreadable image", path, f"image {info['id']}: {size}")
            continue
        listed = (info.get("height", size[0]), info.get("width", size[1]))
        if listed != size:
            detail = f"image {info['id']} is {size[0]}x{size[1]}, listed {listed[0]}x{listed[1]}"
            problems.add("image size differs from the annotation file (HxW)", path, detail)
    return problems


class _COCODataset(Dataset):
    """Loading, validation and transforms shared by the detection and keypoint datasets."""

    flip_pairs: Sequence[tuple[int, int]] = ()

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        image_dir: str | Path,
        image_size: int,
        augment: bool,
        scale_range: tuple[float, float],
        coco: COCO | None,
    ) -> None:
        root = require_path(root, "dataset root")
        self.ann_file = root / ann_file
        self.image_dir = require_path(root / image_dir, "image folder")
        self.coco = load_coco(self.ann_file) if coco is None else coco
        self.image_size = image_size
        self.augment = augment
        self.scale_range = scale_range
        self.image_ids = sorted(self.coco.imgs)
        for image_id in self.image_ids:
            path = self.image_dir / self.coco.imgs[image_id]["file_name"]
            if not path.is_file():
                raise MissingDataError(
                    f"{path}: image file of image {image_id} in {self.ann_file} not found"
                )

    def _error(self, ann: dict[str, Any], problem: str) -> DatasetError:
        return DatasetError(f"{self.ann_file}: annotation {ann['id']}: {problem}")

    def _box(self, ann: dict[str, Any]) -> list[float]:
        """Validated xyxy box of ``ann``, clipped to its image when the size is known."""
        if ann["image_id"] not in self.coco.imgs:
            raise self._error(ann, f"unknown image id {ann['image_id']}")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise self._error(ann, f"bbox must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise self._error(ann, f"bbox width and height must be positive, got w={w}, h={h}")
        info = self.coco.imgs[ann["image_id"]]
        x1, y1 = min(x + w, info.get("width", x + w)), min(y + h, info.get("height", y + h))
        x, y = max(x, 0.0), max(y, 0.0)
        if x1 <= x or y1 <= y:
            raise self._error(ann, f"bbox {bbox} lies outside image {info['id']}")
        return [x, y, x1, y1]

    def _targets(self, image_id: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = load_image(path)
        height, width = image.shape[-2:]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            raise DatasetError(
                f"{path}: image {image_id} is {height}x{width} (HxW) but {self.ann_file} says "
                f"{info.get('height')}x{info.get('width')}"
            )
        sample = {"image": normalize(image), **self._targets(image_id)}
        if self.augment:
            sample, scale = random_scale_crop(sample, self.image_size, self.scale_range)
            sample = random_hflip(sample, self.flip_pairs)
        else:
            sample, scale = letterbox(sample, self.image_size)
        sample["image"] = sample["image"].contiguous()
        sample["image_id"] = torch.tensor(image_id, dtype=torch.int64)
        sample["orig_size"] = torch.tensor([height, width], dtype=torch.int64)
        sample["scale"] = torch.tensor(scale, dtype=torch.float32)
        return sample


class COCODetectionDataset(_COCODataset):
    """Boxes and contiguous labels from a COCO detection JSON.

    Samples: ``image``, ``boxes`` (float32 ``[N, 4]`` xyxy, pixels of the resized image),
    ``labels`` (int64 ``[N]``), ``image_id``, ``orig_size``, ``scale``.

    Args:
        root: dataset root; ``ann_file`` and ``image_dir`` are relative to it (or absolute).
        ann_file: COCO JSON file.
        image_dir: folder of the images named by ``file_name``.
        image_size: side of the square samples.
        augment: random scale, crop and flip instead of the deterministic letterbox.
        scale_range: range of the random scale when ``augment``.
        category_ids: COCO category id of each label; default the sorted ids in ``ann_file``.
        coco: an already loaded ``COCO`` of ``ann_file`` (saves reloading it).
    """

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        image_dir: str | Path,
        image_size: int = 512,
        augment: bool = False,
        scale_range: tuple[float, float] = (0.75, 1.25),
        category_ids: Sequence[int] | None = None,
        coco: COCO | None = None,
    ) -> None:
        super().__init__(root, ann_file, image_dir, image_size, augment, scale_range, coco)
        self.category_ids = sorted(self.coco.cats) if category_ids is None else list(category_ids)
        self.category_id_to_label = {cid: i for i, cid in enumerate(self.category_ids)}
        self.class_names = [
            self.coco.cats.get(c, {}).get("name", str(c)) for c in self.category_ids
        ]
        per_image: dict[int, list[tuple[list[float], int]]] = {i: [] for i in self.image_ids}
        for ann in self.coco.dataset["annotations"]:
            if ann["category_id"] not in self.category_id_to_label:
                raise self._error(ann, f"unknown category id {ann['category_id']}")
            if ann.get("iscrowd", 0):
                continue
            box = self._box(ann)
            per_image[ann["image_id"]].append((box, self.category_id_to_label[ann["category_id"]]))
        self._instances = {
            image_id: (
                np.asarray([box for box, _ in items], dtype=np.float32).reshape(-1, 4),
                np.asarray([label for _, label in items], dtype=np.int64),
            )
            for image_id, items in per_image.items()
        }

    @property
    def num_classes(self) -> int:
        """Number of object classes (background excluded)."""
        return len(self.category_ids)

    def _targets(self, image_id: int) -> dict[str, Tensor]:
        boxes, labels = self._instances[image_id]
        return {"boxes": torch.from_numpy(boxes.copy()), "labels": torch.from_numpy(labels.copy())}


class COCOKeypointsDataset(_COCODataset):
    """Boxes and keypoints of one COCO category (``person`` in COCO) from a keypoints JSON.

    Samples: ``image``, ``boxes`` ``[N, 4]``, ``labels`` (zeros), ``keypoints`` (float32
    ``[N, K, 3]``, x and y in pixels of the resized image, visibility 0/1/2 with x = y = 0 when
    0), ``image_id``, ``orig_size``, ``scale``. Annotations of other categories are skipped.

    Args:
        root: dataset root; ``ann_file`` and ``image_dir`` are relative to it (or absolute).
        ann_file: COCO keypoints JSON file.
        image_dir: folder of the images named by ``file_name``.
        image_size: side of the square samples.
        augment: random scale, crop and flip instead of the deterministic letterbox.
        scale_range: range of the random scale when ``augment``.
        category_id: the category with keypoints; default the only one that has any.
        flip_pairs: left/right index pairs; default pairs of ``left_x``/``right_x`` names.
        coco: an already loaded ``COCO`` of ``ann_file`` (saves reloading it).
    """

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        image_dir: str | Path,
        image_size: int = 512,
        augment: bool = False,
        scale_range: tuple[float, float] = (0.75, 1.25),
        category_id: int | None = None,
        flip_pairs: Sequence[tuple[int, int]] | None = None,
        coco: COCO | None = None,
    ) -> None:
        super().__init__(root, ann_file, image_dir, image_size, augment, scale_range, coco)
        category = keypoint_category(self.coco, self.ann_file, category_id)
        self.category_id: int = category["id"]
        self.keypoint_names: list[str] = list(category["keypoints"])
        num_kps = len(self.keypoint_names)
        self.skeleton = keypoint_skeleton(category)
        self.flip_pairs = keypoint_flip_pairs(self.keypoint_names, flip_pairs)
        for a, b in (*self.skeleton, *self.flip_pairs):
            if not (0 <= a < num_kps and 0 <= b < num_kps):
                raise DatasetError(
                    f"{self.ann_file}: keypoint pair {(a, b)} out of range {num_kps}"
                )
        per_image: dict[int, list[tuple[list[float], np.ndarray]]] = {i: [] for i in self.image_ids}
        for ann in self.coco.dataset["annotations"]:
            if ann["category_id"] not in self.coco.cats:
                raise self._error(ann, f"unknown category id {ann['category_id']}")
            if ann.get("iscrowd", 0) or ann["category_id"] != self.category_id:
                continue
            box, kps = self._box(ann), self._keypoints(ann, num_kps)
            per_image[ann["image_id"]].append((box, kps))
        self._instances = {
            image_id: (
                np.asarray([box for box, _ in items], dtype=np.float32).reshape(-1, 4),
                np.asarray([kps for _, kps in items], dtype=np.float32).reshape(-1, num_kps, 3),
            )
            for image_id, items in per_image.items()
        }

    @property
    def num_keypoints(self) -> int:
        """Number of keypoints per instance."""
        return len(self.keypoint_names)

    def _keypoints(self, ann: dict[str, Any], num_kps: int) -> np.ndarray:
        values = ann.get("keypoints")
        if not isinstance(values, list) or len(values) != 3 * num_kps:
            count = len(values) if isinstance(values, list) else values
            raise self._error(
                ann,
                f"keypoints has {count} values, expected 3 * {num_kps} = {3 * num_kps} for "
                f"category {self.category_id}",
            )
        kps = np.asarray(values, dtype=np.float32).reshape(num_kps, 3)
        if not np.isin(kps[:, 2], (0, 1, 2)).all():
            raise self._error(ann, f"keypoint visibility must be 0, 1 or 2, got {kps[:, 2]}")
        kps[kps[:, 2] == 0] = 0.0
        return kps

    def _targets(self, image_id: int) -> dict[str, Tensor]:
        boxes, kps = self._instances[image_id]
        return {
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.zeros(len(boxes), dtype=torch.int64),
            "keypoints": torch.from_numpy(kps.copy()),
        }
