"""Boxes with captions that stay readable: inside the image, never on top of each other.

Captions are placed greedily, best score first, at the first of a few spots around their box
(above it, inside its top, below it, inside its bottom; left- then right-aligned) that lies in
the image and touches no caption placed before; a caption with no free spot is left out, and
its box still shows its class by colour (the legend names it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import ImageDraw
from torch import Tensor

from dense_lightning.viz.colors import class_colors, text_color
from dense_lightning.viz.text import Font, fit_text, font, from_pil, text_size, to_pil

__all__ = ["LabelBox", "box_captions", "draw_boxes", "layout_labels"]

# Pixels of caption background around the text, horizontally and vertically.
_PAD_X, _PAD_Y = 2, 1
_HALO = (0, 0, 0)  # outline around box edges: a coloured edge shows on light and dark images


@dataclass(frozen=True)
class LabelBox:
    """The rectangle of one drawn caption: pixels ``[x, x + width) x [y, y + height)``."""

    x: int
    y: int
    width: int
    height: int

    def overlaps(self, other: LabelBox) -> bool:
        """Whether the two rectangles share a pixel."""
        return (
            self.x < other.x + other.width
            and other.x < self.x + self.width
            and self.y < other.y + other.height
            and other.y < self.y + self.height
        )

    def inside(self, width: int, height: int) -> bool:
        """Whether the rectangle lies wholly in a ``width x height`` image."""
        return (
            self.x >= 0
            and self.y >= 0
            and self.x + self.width <= width
            and self.y + self.height <= height
        )


def layout_labels(
    boxes: Tensor, sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]
) -> list[LabelBox | None]:
    """Place a caption of ``sizes[i]`` (width, height) by each box, in the given order.

    Args:
        boxes: ``[N, 4]`` xyxy boxes in pixels; put the most important first.
        sizes: caption size of each box, in pixels.
        image_size: ``(H, W)`` of the image.

    Returns:
        Per box, the caption's rectangle, or ``None`` when every spot is taken or off the image.
        The rectangles lie in the image and are pairwise disjoint.
    """
    height, width = image_size
    placed: list[LabelBox] = []
    result: list[LabelBox | None] = []
    for box, (w, h) in zip(boxes.tolist(), sizes, strict=True):
        x0, y0, x1, y1 = (round(v) for v in box)
        spot = None
        if w <= width and h <= height:
            candidates = [
                (x0, y0 - h),
                (x0, y0),
                (x0, y1),
                (x0, y1 - h),
                (x1 - w, y0 - h),
                (x1 - w, y0),
                (x1 - w, y1),
                (x1 - w, y1 - h),
            ]
            for x, y in candidates:
                label = LabelBox(min(max(x, 0), width - w), min(max(y, 0), height - h), w, h)
                if not any(label.overlaps(other) for other in placed):
                    spot = label
                    break
        if spot is not None:
            placed.append(spot)
        result.append(spot)
    return result


def box_captions(
    count: int,
    labels: Tensor | None,
    scores: Tensor | None,
    class_names: Sequence[str] | None,
) -> list[str]:
    """``"name 0.93"`` per box (``"name"`` without scores, ``"0.93"`` without labels)."""
    captions = []
    for i in range(count):
        parts = []
        if labels is not None:
            label = int(labels[i])
            known = class_names is not None and 0 <= label < len(class_names)
            parts.append(class_names[label] if known else str(label))
        if scores is not None:
            parts.append(f"{float(scores[i]):.2f}")
        captions.append(" ".join(parts))
    return captions


def draw_boxes(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor | None = None,
    scores: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    width: int = 2,
    score_threshold: float | None = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
    captions: bool = True,
    face: Font | None = None,
) -> Tensor:
    """Draw xyxy pixel ``boxes`` ``[N, 4]`` coloured by class, captioned ``"name score"``.

    Each edge is a coloured line with a thin dark outline, so it shows on any background.
    Captions sit on a patch of the box's colour, inside the image and apart from each other
    (see :func:`layout_labels`); higher scores are placed first and drawn on top.

    Args:
        image: ``uint8 [3, H, W]``.
        boxes: boxes in the image's pixels.
        labels: class index of each box (colour, from :func:`class_colors`, and name).
        scores: confidence of each box, appended to the caption.
        class_names: name of each class index (default: the index).
        width: line width in pixels.
        score_threshold: boxes scored below it are not drawn (needs ``scores``).
        colors: colour of each box, overriding the class colours (instances, say).
        captions: write captions (the class then shows by colour only).
        face: caption font (default :func:`~dense_lightning.viz.text.font`).

    Raises:
        ValueError: ``score_threshold`` without ``scores``, or ``colors`` of the wrong length.
    """
    image = image.cpu()
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    if score_threshold is not None and scores is None:
        raise ValueError("draw_boxes: score_threshold needs the boxes' scores.")
    if colors is not None and len(colors) != len(boxes):
        raise ValueError(f"draw_boxes: {len(colors)} colours for {len(boxes)} boxes.")
    order = torch.arange(len(boxes))
    if scores is not None:
        scores = scores.detach().float().cpu().reshape(-1)
        order = scores.argsort(descending=True, stable=True)
        if score_threshold is not None:
            order = order[scores[order] >= score_threshold]
    if len(order) == 0:
        return image.clone()
    if colors is None:
        ids = [0] * len(boxes) if labels is None else [int(v) for v in labels.tolist()]
        palette = class_colors(max(ids) + 1).tolist()
        colors = [tuple(palette[i]) if i >= 0 else (255, 255, 255) for i in ids]
    texts = box_captions(len(boxes), labels, scores, class_names) if captions else None
    canvas = to_pil(image)
    draw = ImageDraw.Draw(canvas)
    # Lowest score first, so the best boxes end on top.
    for i in reversed(order.tolist()):
        x0, y0, x1, y1 = (round(v) for v in boxes[i].tolist())
        x1, y1 = max(x1 - 1, x0), max(y1 - 1, y0)  # last pixel inside the box
        draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=_HALO, width=width + 2)
        draw.rectangle((x0, y0, x1, y1), outline=tuple(colors[i]), width=width)
    if texts is not None:
        ranked = order.tolist()
        _draw_captions(
            draw,
            boxes[order],
            [texts[i] for i in ranked],
            [colors[i] for i in ranked],
            canvas.size,
            face or font(),
        )
    return from_pil(canvas)


def _draw_captions(
    draw: ImageDraw.ImageDraw,
    boxes: Tensor,
    texts: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    image_wh: tuple[int, int],
    face: Font,
) -> list[LabelBox | None]:
    """Draw captions where :func:`layout_labels` puts them; returns their rectangles."""
    width, height = image_wh
    fitted = [fit_text(t, width - 2 * _PAD_X, face) for t in texts]
    sizes = [text_size(t, face) for t in fitted]
    sizes = [(w + 2 * _PAD_X, h + 2 * _PAD_Y) for w, h in sizes]
    spots = layout_labels(boxes, sizes, (height, width))
    for text, color, spot in zip(fitted, colors, spots, strict=True):
        if spot is None or not text:
            continue
        fill = tuple(int(v) for v in color)
        corner = (spot.x + spot.width - 1, spot.y + spot.height - 1)
        draw.rectangle((spot.x, spot.y, *corner), fill=fill)
        draw.text((spot.x + _PAD_X, spot.y + _PAD_Y), text, fill=text_color(fill), font=face)
    return spots
