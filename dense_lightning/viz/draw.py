"""Drawing primitives on ``uint8 [3, H, W]`` tensors: masks, boxes, skeletons, titles, grids.

Every function takes and returns ``uint8`` RGB tensors (channels first, on the CPU), the
format of ``torchvision.utils``'s drawing functions, and leaves its input untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

from dense_lightning.viz.colors import palette

__all__ = [
    "display_factor",
    "draw_boxes",
    "draw_skeletons",
    "ordinal",
    "overlay_mask",
    "resize_nearest",
    "tile",
    "titled",
    "to_hwc",
    "upscale",
]

_BACKGROUND = 255  # grey level of the gaps between tiles and of title strips
_TITLE_HEIGHT = 14


def _color(index: int) -> tuple[int, int, int]:
    """The palette colour of label ``index`` (label 0 is black in the palette, so skip it)."""
    r, g, b = palette(index + 2)[index + 1].tolist()
    return int(r), int(g), int(b)


def overlay_mask(
    image: Tensor,
    labels: Tensor,
    alpha: float = 0.5,
    ignore_index: int | None = 255,
    background: int | None = 0,
) -> Tensor:
    """Blend a label map ``[H, W]`` over ``image`` in palette colours.

    Args:
        image: ``uint8 [3, H, W]``.
        labels: class indices of the same size.
        alpha: opacity of the colours.
        ignore_index: label left unpainted (``None`` for none).
        background: label left unpainted, so the image shows through (``None`` paints it).
    """
    labels = labels.long().cpu()
    skip = {ignore_index, background} - {None}
    classes = [c for c in labels.unique().tolist() if c not in skip]
    if not classes:
        return image.clone()
    masks = torch.stack([labels == c for c in classes])
    colors = [tuple(int(v) for v in palette(c + 1)[c].tolist()) for c in classes]
    return draw_segmentation_masks(image.cpu(), masks, alpha=alpha, colors=colors)


def draw_boxes(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor | None = None,
    scores: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    width: int = 1,
) -> Tensor:
    """Draw xyxy pixel ``boxes`` ``[N, 4]``, coloured by label, captioned "name score".

    Args:
        image: ``uint8 [3, H, W]``.
        boxes: boxes in the image's pixels.
        labels: class index of each box (colour and name).
        scores: confidence of each box, appended to the caption.
        class_names: name of each class index (default: the index).
        width: line width in pixels.
    """
    image = image.cpu()
    if len(boxes) == 0:
        return image.clone()
    boxes = boxes.detach().float().cpu()
    label_ids = [0] * len(boxes) if labels is None else [int(v) for v in labels.tolist()]
    captions = None
    if labels is not None or scores is not None:
        captions = []
        for i, label in enumerate(label_ids):
            name = class_names[label] if class_names and label < len(class_names) else str(label)
            name = "" if labels is None else name
            score = "" if scores is None else f" {float(scores[i]):.2f}"
            captions.append(f"{name}{score}".strip())
    colors = [_color(label) for label in label_ids]
    return draw_bounding_boxes(image, boxes, labels=captions, colors=colors, width=width)


def draw_skeletons(
    image: Tensor,
    keypoints: Tensor,
    skeleton: Sequence[tuple[int, int]] | None = None,
    threshold: float = 0.0,
    radius: int = 1,
    width: int = 1,
) -> Tensor:
    """Draw the keypoints ``[N, K, 3]`` of ``N`` instances with their bones.

    The third value of a keypoint is its visibility (ground truth, COCO's 0/1/2) or its score
    (predictions); keypoints whose value is not above ``threshold`` are not drawn, nor are the
    bones that end at them. Each instance gets its own colour.

    Args:
        image: ``uint8 [3, H, W]``.
        keypoints: ``(x, y, visibility or score)`` in the image's pixels.
        skeleton: pairs of keypoint indices joined by a bone.
        threshold: keypoints with a third value ``<= threshold`` are hidden.
        radius: keypoint radius in pixels.
        width: bone width in pixels.
    """
    image = image.cpu()
    keypoints = keypoints.detach().float().cpu()
    connectivity = [(int(a), int(b)) for a, b in skeleton] if skeleton else None
    for i, instance in enumerate(keypoints):
        visible = instance[:, 2] > threshold
        if not visible.any():
            continue
        image = draw_keypoints(
            image,
            instance[None, :, :2],
            connectivity=connectivity,
            colors=_color(i),
            radius=radius,
            width=width,
            visibility=visible[None],
        )
    return image


def upscale(image: Tensor, factor: int) -> Tensor:
    """Enlarge ``image`` ``factor`` times with nearest-neighbour sampling (cells stay sharp)."""
    if factor <= 1:
        return image
    return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def resize_nearest(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``uint8 [3, h, w]`` to ``size`` ``(H, W)`` with nearest-neighbour sampling."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None].float(), size=size, mode="nearest")[0].to(torch.uint8)


def titled(image: Tensor, title: str) -> Tensor:
    """Put a one-line ``title`` in a light strip above ``image``."""
    width = int(image.shape[-1])
    strip = Image.new("RGB", (width, _TITLE_HEIGHT), (_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    text = title
    # Shorten until it fits: a clipped title is better than a picture wider than its panel.
    while text and draw.textlength(text, font=font) > width - 2:
        text = text[:-2] + "…" if len(text) > 2 else ""
    draw.text((1, 0), text, fill=(0, 0, 0), font=font)
    header = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)
    return torch.cat([header, image.cpu()], dim=-2)


def tile(rows: Sequence[Sequence[Tensor]], gap: int = 2) -> Tensor:
    """Arrange panels in rows; panels of a row are top-aligned, rows left-aligned.

    Args:
        rows: panels ``uint8 [3, h, w]``, row by row (rows may differ in length and size).
        gap: pixels of light grey between panels and around the grid.

    Returns:
        One ``uint8 [3, H, W]`` picture.
    """
    rows = [list(row) for row in rows if len(row)]
    if not rows:
        raise ValueError("tile needs at least one panel")
    heights = [max(int(p.shape[-2]) for p in row) for row in rows]
    widths = [sum(int(p.shape[-1]) for p in row) + gap * (len(row) - 1) for row in rows]
    canvas = torch.full(
        (3, sum(heights) + gap * (len(rows) + 1), max(widths) + 2 * gap),
        _BACKGROUND,
        dtype=torch.uint8,
    )
    y = gap
    for row, height in zip(rows, heights, strict=True):
        x = gap
        for panel in row:
            h, w = panel.shape[-2:]
            canvas[:, y : y + h, x : x + w] = panel.cpu()
            x += int(w) + gap
        y += height + gap
    return canvas


def to_hwc(image: Tensor) -> np.ndarray:
    """``uint8 [3, H, W]`` tensor to a ``uint8 [H, W, 3]`` array (PIL, wandb, matplotlib)."""
    return np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())


def display_factor(size: Sequence[int], min_size: int) -> int:
    """Integer enlargement that makes the shorter side of ``size`` at least ``min_size``."""
    return max(1, math.ceil(min_size / max(min(size), 1)))


def ordinal(number: int) -> str:
    """``1st``, ``2nd``, ``4th``, ``12th``...: for "every 4th cell"."""
    suffix = (
        "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    )
    return f"{number}{suffix}"
