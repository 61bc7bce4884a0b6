"""Seeded synthetic stick figures with 13 named keypoints, for keypoint estimation.

Each image holds one to ``max_figures`` articulated stick figures (head, shoulders, elbows,
wrists, hips, knees, ankles; COCO-style names) on a textured background. Figures are seen from
behind, so a figure's left limbs hang from its image-left shoulder and hip: left and right are
visible in the image, and a horizontal flip with :data:`FLIP_PAIRS` gives a correctly labelled
figure. Visibility follows COCO: 2 visible, 1 hidden behind an occluding patch, 0 outside the
image (then x = y = 0). Sample ``i`` of a split depends only on ``(seed, split, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dense_lightning.data.base import Split, check_choice, check_range, collate_instances
from dense_lightning.data.shapes import (
    contrasting_colour,
    paint,
    segment_mask,
    textured_background,
)
from dense_lightning.data.synthetic import SyntheticDataModule, box_of, image_to_tensor, sample_rng
from dense_lightning.data.transforms import flip_pairs_from_names

__all__ = [
    "FLIP_PAIRS",
    "KEYPOINT_NAMES",
    "SKELETON",
    "Figure",
    "SyntheticKeypointsDataModule",
    "SyntheticKeypointsDataset",
]

KEYPOINT_NAMES: tuple[str, ...] = (
    "head",
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
)
FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple(flip_pairs_from_names(KEYPOINT_NAMES))
SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 2), (1, 3), (3, 5), (2, 4), (4, 6),
    (1, 7), (2, 8), (7, 8), (7, 9), (9, 11), (8, 10), (10, 12),
)  # fmt: skip
_MIN_IMAGE_SIZE = 32
_MIN_PIXELS = 30  # figures with fewer pixels inside the image are redrawn


@dataclass(frozen=True)
class Figure:
    """One drawn figure: keypoints ``[K, 3]``, exact mask (before occlusion) and xyxy box."""

    keypoints: np.ndarray
    mask: np.ndarray
    box: list[float]


def figure_pose(rng: np.random.Generator, cx: float, cy: float, height: float) -> np.ndarray:
    """Keypoint positions ``[K, 2]`` of a figure of ``height`` pixels with hips at ``(cx, cy)``.

    Angles are in image coordinates (y down): 90 degrees points down, 180 to the image left.
    """
    u = height / 7
    hips = np.array([cx, cy])
    shoulders = hips + np.array([rng.uniform(-0.3, 0.3) * u, -2.2 * u])
    pts = np.zeros((len(KEYPOINT_NAMES), 2))
    pts[0] = shoulders + np.array([rng.uniform(-0.15, 0.15) * u, -1.1 * u])
    half_shoulders, half_hips = np.array([0.9 * u, 0.0]), np.array([0.6 * u, 0.0])
    pts[1], pts[2] = shoulders - half_shoulders, shoulders + half_shoulders
    pts[7], pts[8] = hips - half_hips, hips + half_hips
    limbs = (  # (root, joint, end, angle range, bend, lengths)
        (1, 3, 5, (90, 225), 70, (1.3, 1.2)),
        (2, 4, 6, (-45, 90), 70, (1.3, 1.2)),
        (7, 9, 11, (95, 130), 30, (1.6, 1.5)),
        (8, 10, 12, (50, 85), 30, (1.6, 1.5)),
    )
    for root, joint, end, (low, high), bend, (upper, lower) in limbs:
        first = np.deg2rad(rng.uniform(low, high))
        second = first + np.deg2rad(rng.uniform(-bend, bend))
        pts[joint] = pts[root] + upper * u * np.array([np.cos(first), np.sin(first)])
        pts[end] = pts[joint] + lower * u * np.array([np.cos(second), np.sin(second)])
    return pts


def draw_figure(pts: np.ndarray, height: float, size: int) -> np.ndarray:
    """Exact mask of the figure: thick bones, a thicker torso and a disc for the head."""
    u = height / 7
    limb, torso = max(1.0, 0.22 * u), max(1.2, 0.35 * u)
    mask = segment_mask(tuple(pts[0]), tuple(pts[0]), max(1.5, 0.55 * u), size)
    for a, b in SKELETON:
        mask |= segment_mask(tuple(pts[a]), tuple(pts[b]), limb, size)
    neck, pelvis = (pts[1] + pts[2]) / 2, (pts[7] + pts[8]) / 2
    mask |= segment_mask(tuple(neck), tuple(pelvis), torso, size)
    return mask


def _inside(pts: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)


def render_figures(
    rng: np.random.Generator, size: int, max_figures: int
) -> tuple[np.ndarray, list[Figure]]:
    """Draw 1 to ``max_figures`` figures with disjoint boxes, some partly hidden or cut off."""
    image = textured_background(rng, size)
    count = int(rng.integers(1, max_figures + 1))
    figures: list[Figure] = []
    for _ in range(30 * count):
        if len(figures) == count:
            break
        height = rng.uniform(0.35, 0.75) * size
        cx, cy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.35, 0.9) * size
        pts = figure_pose(rng, cx, cy, height)
        mask = draw_figure(pts, height, size)
        if mask.sum() < _MIN_PIXELS:
            continue
        box = box_of(mask)
        if any(box[0] < f.box[2] and f.box[0] < box[2] and box[1] < f.box[3] and f.box[1] < box[3]
               for f in figures):  # fmt: skip
            continue
        paint(rng, image, mask, contrasting_colour(rng, image, mask))
        visibility = np.where(_inside(pts, 0, 0, size, size), 2.0, 0.0)
        if rng.random() < 0.5:
            visibility = _occlude(rng, image, box, pts, visibility)
        keypoints = np.concatenate([pts, visibility[:, None]], axis=1)
        keypoints[visibility == 0] = 0.0
        figures.append(Figure(keypoints.astype(np.float32), mask, box))
    return image, figures


def _occlude(
    rng: np.random.Generator, image: np.ndarray, box: list[float], pts: np.ndarray, vis: np.ndarray
) -> np.ndarray:
    """Paint a patch over part of ``box``; in-image keypoints under it become visibility 1."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    w, h = rng.uniform(0.3, 0.6) * bw, rng.uniform(0.3, 0.6) * bh
    x0, y0 = box[0] + rng.uniform(0, bw - w), box[1] + rng.uniform(0, bh - h)
    r0, r1 = round(y0), max(round(y0 + h), round(y0) + 1)
    c0, c1 = round(x0), max(round(x0 + w), round(x0) + 1)
    patch = np.zeros(image.shape[:2], dtype=bool)
    patch[r0:r1, c0:c1] = True
    paint(rng, image, patch, contrasting_colour(rng, image, patch))
    return np.where((vis > 0) & _inside(pts, c0, r0, c1, r1), 1.0, vis)


class SyntheticKeypointsDataset(Dataset):
    """Stick figures with keypoints; samples as the COCO keypoint datasets (labels all 0).

    Args:
        num_samples: length of the dataset.
        image_size: side of the square images (at least 32).
        seed: base seed; sample ``i`` depends only on ``(seed, split, i)``.
        split: which split this is (splits draw different samples).
        max_figures: most figures per image.
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int = 64,
        seed: int = 0,
        split: Split = "train",
        max_figures: int = 2,
    ) -> None:
        check_range("num_samples", num_samples, 0)
        check_range("image_size", image_size, _MIN_IMAGE_SIZE)
        check_range("max_figures", max_figures, 1)
        check_choice("split", split, Split)
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.max_figures = max_figures

    def __len__(self) -> int:
        return self.num_samples

    def render(self, index: int) -> tuple[np.ndarray, list[Figure]]:
        """The raw scene of sample ``index``: float image ``[H, W, 3]`` and its figures."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = sample_rng(self.seed, self.split, index)
        return render_figures(rng, self.image_size, self.max_figures)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, figures = self.render(index)
        num_kps = len(KEYPOINT_NAMES)
        keypoints = (
            np.stack([f.keypoints for f in figures]) if figures else np.zeros((0, num_kps, 3))
        )
        return {
            "image": image_to_tensor(image),
            "boxes": torch.tensor([f.box for f in figures], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.zeros(len(figures), dtype=torch.int64),
            "keypoints": torch.from_numpy(keypoints).float(),
            "image_id": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor([self.image_size, self.image_size], dtype=torch.int64),
            "scale": torch.ones(2, dtype=torch.float32),
        }


class SyntheticKeypointsDataModule(SyntheticDataModule):
    """Synthetic stick figures for keypoint estimation; batches via :func:`collate_instances`.

    Attributes read by the tasks: ``num_keypoints`` (13), ``keypoint_names``, ``flip_pairs``,
    ``skeleton``, ``num_classes`` (1) and ``image_size``.

    Args:
        image_size: side of the square images (at least 32).
        num_train: training samples.
        num_val: validation samples.
        num_test: test samples.
        num_predict: prediction samples.
        batch_size: samples per batch.
        num_workers: dataloader workers.
        seed: base seed of every split.
        max_figures: most figures per image.
    """

    collate_fn = staticmethod(collate_instances)

    def __init__(
        self,
        image_size: int = 64,
        num_train: int = 256,
        num_val: int = 64,
        num_test: int = 64,
        num_predict: int = 16,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        max_figures: int = 2,
    ) -> None:
        check_range("image_size", image_size, _MIN_IMAGE_SIZE)
        super().__init__(
            image_size, num_train, num_val, num_test, num_predict, batch_size, num_workers, seed
        )
        self.save_hyperparameters()
        check_range("max_figures", max_figures, 1)
        self.max_figures = max_figures
        self.num_classes = 1
        self.keypoint_names = list(KEYPOINT_NAMES)
        self.num_keypoints = len(KEYPOINT_NAMES)
        self.flip_pairs = list(FLIP_PAIRS)
        self.skeleton = list(SKELETON)

    def build_dataset(self, split: Split) -> SyntheticKeypointsDataset:
        """Build the synthetic keypoints dataset of ``split``."""
        return SyntheticKeypointsDataset(
            self.split_sizes[split], self.image_size, self.seed, split, self.max_figures
        )
