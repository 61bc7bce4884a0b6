"""Fixtures: tiny VOC and COCO datasets (3 images each) written to tmp_path.

The suite runs with ``--import-mode=importlib``, so helpers reach tests as fixtures.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COCO_KEYPOINT_NAMES = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]
COCO_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
    [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip

# (id, width, height) of the three images of every tiny dataset.
IMAGE_SIZES = {"a": (40, 30), "b": (36, 48), "c": (32, 32)}
VOC_NUM_CLASSES = 3


def _write_rgb(path: Path, width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_palette_mask(path: Path, mask: np.ndarray) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in (i * 40 % 256, i * 90 % 256, i * 7 % 256)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def voc_mask(width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[2:12, 3:15] = 1
    mask[height - 10 :, width - 8 :] = 2
    mask[12, 3:15] = 255  # VOC-style object border
    return mask


def _images_json() -> list[dict]:
    return [
        {"id": 10 + i, "file_name": f"{name}.png", "width": w, "height": h}
        for i, (name, (w, h)) in enumerate(IMAGE_SIZES.items())
    ]


def coco_detection_json() -> dict:
    """Categories 1, 3, 7 (labels 0, 1, 2); image 12 has no annotations; one crowd box."""
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [4, 2, 10, 8], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [20, 10, 15, 12], "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [1, 20, 20, 20], "iscrowd": 0},
        {"id": 4, "image_id": 11, "category_id": 1, "bbox": [0, 0, 30, 10], "iscrowd": 1},
    ]
    categories = [{"id": c, "name": n} for c, n in ((1, "cat"), (3, "dog"), (7, "bird"))]
    return {"images": _images_json(), "annotations": annotations, "categories": categories}


def person_keypoints(points: dict[str, tuple[float, float, int]]) -> list[float]:
    flat: list[float] = []
    for name in COCO_KEYPOINT_NAMES:
        x, y, v = points.get(name, (0, 0, 0))
        flat += [x, y, v]
    return flat


def coco_keypoints_json() -> dict:
    """One person category with the 17 COCO keypoints; a crowd person and a second category."""
    person_a = person_keypoints(
        {
            "nose": (10, 5, 2),
            "left_shoulder": (14, 10, 2),
            "right_shoulder": (6, 10, 1),
            "left_wrist": (16, 20, 2),
        }
    )
    # left_knee: unlabelled (v=0) but with stray coordinates, which must read as (0, 0, 0).
    person_b = person_keypoints(
        {"left_eye": (20, 30, 2), "right_ankle": (12, 44, 2), "left_knee": (5, 6, 0)}
    )
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [4, 3, 14, 20],
         "keypoints": person_a, "num_keypoints": 4, "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 1, "bbox": [10, 25, 15, 22],
         "keypoints": person_b, "num_keypoints": 2, "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 1, "bbox": [0, 0, 10, 10],
         "keypoints": person_keypoints({}), "num_keypoints": 0, "iscrowd": 1},
        {"id": 4, "image_id": 12, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0},
    ]  # fmt: skip
    categories = [
        {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": COCO_KEYPOINT_NAMES,
            "skeleton": COCO_SKELETON,
        },
        {"id": 2, "name": "ball"},
    ]
    return {"images": _images_json(), "annotations": annotations, "categories": categories}


def write_coco(root: Path, data: dict, train: dict | None = None) -> Path:
    """Write images and ``data`` as both train and val JSON (or ``train`` as the train JSON)."""
    for seed, (name, (w, h)) in enumerate(IMAGE_SIZES.items()):
        _write_rgb(root / "images" / f"{name}.png", w, h, seed)
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "train.json").write_text(json.dumps(train if train is not None else data))
    (ann / "val.json").write_text(json.dumps(data))
    return root


def write_voc(root: Path) -> Path:
    """A 3-image VOC folder: train = a, b; val = c, a. Masks hold labels 0, 1, 2 and 255."""
    for seed, (name, (w, h)) in enumerate(IMAGE_SIZES.items()):
        _write_rgb(root / "JPEGImages" / f"{name}.jpg", w, h, seed)
        write_palette_mask(root / "SegmentationClass" / f"{name}.png", voc_mask(w, h))
    splits = root / "ImageSets" / "Segmentation"
    splits.mkdir(parents=True)
    (splits / "train.txt").write_text("a\nb\n")
    (splits / "val.txt").write_text("c\n\na\n")
    return root


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return write_voc(tmp_path / "voc")


@pytest.fixture
def coco_det_json() -> dict:
    return coco_detection_json()


@pytest.fixture
def coco_kp_json() -> dict:
    return coco_keypoints_json()


@pytest.fixture
def make_coco_root(tmp_path: Path):
    """``make(data, train=None)`` writes a COCO root with ``data`` as val (and train) JSON."""
    counter = iter(range(1000))

    def make(data: dict, train: dict | None = None) -> Path:
        return write_coco(tmp_path / f"coco{next(counter)}", data, train)

    return make


@pytest.fixture
def coco_det_root(make_coco_root) -> Path:
    return make_coco_root(coco_detection_json())


@pytest.fixture
def coco_kp_root(make_coco_root) -> Path:
    return make_coco_root(coco_keypoints_json())
