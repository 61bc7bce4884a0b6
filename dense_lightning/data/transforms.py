"""Label-consistent transforms on sample dicts (image, mask, boxes, keypoints).

A sample is a ``dict[str, Tensor]`` holding some of:

- ``image``: float32 ``[3, H, W]``, already normalised (so zero padding is the mean colour);
- ``mask``: int64 ``[H, W]`` class indices;
- ``boxes``: float32 ``[N, 4]`` xyxy in pixels;
- ``labels``: int64 ``[N]``;
- ``keypoints``: float32 ``[N, K, 3]`` (x, y, visibility), COCO visibility 0/1/2.

Coordinates are continuous: the image spans ``[0, W] x [0, H]`` and pixel ``(i, j)`` covers
``[j, j + 1) x [i, i + 1)``. A horizontal flip therefore maps ``x`` to ``W - x``. Keypoints with
visibility 0 always read ``(0, 0, 0)``, as in COCO. Every function returns a new dict and leaves
the input untouched; keys it does not know are passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "crop",
    "denormalize",
    "flip_pairs_from_names",
    "hflip",
    "letterbox",
    "normalize",
    "pad",
    "random_hflip",
    "random_scale_crop",
    "resize",
]

Sample = dict[str, Tensor]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Boxes narrower or lower than this after a crop carry no usable signal and are dropped.
_MIN_BOX_SIDE = 1.0


def normalize(image: Tensor) -> Tensor:
    """Normalise a ``[3, H, W]`` image in ``[0, 1]`` with the ImageNet mean and std."""
    mean = image.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (image - mean) / std


def denormalize(image: Tensor) -> Tensor:
    """Invert :func:`normalize`; works on ``[3, H, W]`` and ``[B, 3, H, W]``."""
    mean = image.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return image * std + mean


def flip_pairs_from_names(names: Sequence[str]) -> list[tuple[int, int]]:
    """Pair keypoints named ``left_<x>`` / ``right_<x>`` (COCO convention).

    Args:
        names: keypoint names in order.

    Returns:
        Sorted ``(left_index, right_index)`` pairs; names without a counterpart are unpaired.
    """
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for name, i in index.items():
        if name.startswith("left_") and f"right_{name[5:]}" in index:
            pairs.append((i, index[f"right_{name[5:]}"]))
    return sorted(pairs)


def _spatial_size(sample: Sample) -> tuple[int, int]:
    if "image" in sample:
        return int(sample["image"].shape[-2]), int(sample["image"].shape[-1])
    return int(sample["mask"].shape[-2]), int(sample["mask"].shape[-1])


def _zero_invisible(keypoints: Tensor) -> Tensor:
    return keypoints * (keypoints[..., 2:3] > 0).to(keypoints.dtype)


def resize(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize to ``size = (height, width)``: bilinear image, nearest mask, scaled coordinates."""
    height, width = _spatial_size(sample)
    out = dict(sample)
    if "image" in sample:
        image = sample["image"][None]
        out["image"] = F.interpolate(
            image, size=size, mode="bilinear", align_corners=False, antialias=True
        )[0]
    if "mask" in sample:
        # nearest-exact samples pixel centres, like PIL's NEAREST; float is exact for labels.
        mask = sample["mask"][None, None].float()
        out["mask"] = F.interpolate(mask, size=size, mode="nearest-exact")[0, 0].long()
    sx, sy = size[1] / width, size[0] / height
    if "boxes" in sample:
        out["boxes"] = sample["boxes"] * sample["boxes"].new_tensor([sx, sy, sx, sy])
    if "keypoints" in sample:
        kps = sample["keypoints"] * sample["keypoints"].new_tensor([sx, sy, 1.0])
        out["keypoints"] = _zero_invisible(kps)
    return out


def pad(sample: Sample, size: tuple[int, int], ignore_index: int = 255) -> Sample:
    """Pad bottom and right up to at least ``size``; the mask is padded with ``ignore_index``."""
    height, width = _spatial_size(sample)
    pad_h, pad_w = max(size[0] - height, 0), max(size[1] - width, 0)
    if pad_h == 0 and pad_w == 0:
        return dict(sample)
    out = dict(sample)
    if "image" in sample:
        out["image"] = F.pad(sample["image"], (0, pad_w, 0, pad_h), value=0.0)
    if "mask" in sample:
        out["mask"] = F.pad(sample["mask"], (0, pad_w, 0, pad_h), value=ignore_index)
    return out


def crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Crop a window; boxes are clipped and dropped when they leave, keypoints outside get v=0.

    Dropping a box also drops its label and keypoints, so the instance arrays stay aligned.
    """
    out = dict(sample)
    if "image" in sample:
        out["image"] = sample["image"][:, top : top + height, left : left + width]
    if "mask" in sample:
        out["mask"] = sample["mask"][top : top + height, left : left + width]
    keep: Tensor | slice = slice(None)
    if "boxes" in sample:
        offset = sample["boxes"].new_tensor([left, top, left, top])
        boxes = sample["boxes"] - offset
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        sides = boxes[:, 2:] - boxes[:, :2]
        keep = (sides >= _MIN_BOX_SIDE).all(dim=1)
        out["boxes"] = boxes[keep]
    if "labels" in sample:
        out["labels"] = sample["labels"][keep]
    if "keypoints" in sample:
        kps = sample["keypoints"][keep].clone()
        kps[..., 0] -= left
        kps[..., 1] -= top
        inside = (kps[..., 0] >= 0) & (kps[..., 0] <= width)
        inside &= (kps[..., 1] >= 0) & (kps[..., 1] <= height)
        kps[..., 2] = torch.where(inside, kps[..., 2], torch.zeros_like(kps[..., 2]))
        out["keypoints"] = _zero_invisible(kps)
    return out


def hflip(sample: Sample, flip_pairs: Sequence[tuple[int, int]] = ()) -> Sample:
    """Mirror horizontally; keypoints named left/right swap places through ``flip_pairs``.

    Flipping twice with the same pairs restores the sample (coordinates up to float rounding).
    """
    _, width = _spatial_size(sample)
    out = dict(sample)
    if "image" in sample:
        out["image"] = sample["image"].flip(-1)
    if "mask" in sample:
        out["mask"] = sample["mask"].flip(-1)
    if "boxes" in sample:
        boxes = sample["boxes"].clone()
        boxes[:, 0] = width - sample["boxes"][:, 2]
        boxes[:, 2] = width - sample["boxes"][:, 0]
        out["boxes"] = boxes
    if "keypoints" in sample:
        kps = sample["keypoints"].clone()
        kps[..., 0] = width - kps[..., 0]
        perm = list(range(kps.shape[1]))
        for left, right in flip_pairs:
            perm[left], perm[right] = right, left
        out["keypoints"] = _zero_invisible(kps[:, perm])
    return out


def letterbox(
    sample: Sample, size: int, ignore_index: int = 255
) -> tuple[Sample, tuple[float, float]]:
    """Resize so the longer side is ``size`` (aspect kept), then pad to ``size x size``.

    Args:
        sample: the sample to transform.
        size: side of the square output.
        ignore_index: mask value of the padding.

    Returns:
        The sample and the factors ``(sx, sy)`` with ``resized = original * factor``, so
        predictions map back to the original image by dividing x by ``sx`` and y by ``sy``.
    """
    height, width = _spatial_size(sample)
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    out = resize(sample, (new_h, new_w)) if (new_h, new_w) != (height, width) else dict(sample)
    return pad(out, (size, size), ignore_index), (new_w / width, new_h / height)


def random_scale_crop(
    sample: Sample,
    size: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> tuple[Sample, tuple[float, float]]:
    """Random rescale, pad and random ``size x size`` crop (DeepLab-style training augmentation).

    The scale is drawn uniformly in ``scale_range`` relative to the letterbox scale (longer side
    equal to ``size``), so 1.0 shows the whole image and 2.0 about a quarter of it.

    Returns:
        The sample and the resize factors ``(sx, sy)`` (the crop offset is not reported).
    """
    height, width = _spatial_size(sample)
    low, high = scale_range
    factor = low + (high - low) * float(torch.rand((), generator=generator))
    scale = factor * size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    out = pad(resize(sample, (new_h, new_w)), (size, size), ignore_index)
    padded_h, padded_w = _spatial_size(out)
    top = int(torch.randint(0, padded_h - size + 1, (), generator=generator))
    left = int(torch.randint(0, padded_w - size + 1, (), generator=generator))
    return crop(out, top, left, size, size), (new_w / width, new_h / height)


def random_hflip(
    sample: Sample,
    flip_pairs: Sequence[tuple[int, int]] = (),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Sample:
    """Apply :func:`hflip` with probability ``p``."""
    if float(torch.rand((), generator=generator)) < p:
        return hflip(sample, flip_pairs)
    return dict(sample)
