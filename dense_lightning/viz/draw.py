"""Drawing primitives on ``uint8 [3, H, W]`` tensors: masks, skeletons, titles, grids.

Every function takes and returns ``uint8`` RGB tensors (channels first, on the CPU), the
format of ``torchvision.utils``'s drawing functions, and leaves its input untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from dense_lightning.viz.colors import class_colors
from dense_lightning.viz.guides import PANEL_BACKGROUND
from dense_lightning.viz.text import (
    Font,
    font,
    from_pil,
    text_size,
    to_pil,
    wrap_text,
)

__all__ = [
    "display_factor",
    "draw_skeletons",
    "footer",
    "label_edges",
    "mute",
    "ordinal",
    "overlay_mask",
    "resize_nearest",
    "tile",
    "title_height",
    "title_lines",
    "titled",
    "to_hwc",
    "upscale",
]

_OUTLINE = (0, 0, 0)  # edge around bones and keypoints
_MUTED_GREY = 200.0  # the light grey a muted image is washed toward


def mute(image: Tensor, amount: float = 0.5) -> Tensor:
    """``image`` in grey, washed toward light grey, so that only the drawings on it have colour.

    The image's own colours would otherwise pass for class colours (a blue shape under a
    legend whose blue means "disc").

    Args:
        image: ``uint8 [3, H, W]``.
        amount: 0 keeps the grey levels, 1 makes the image one flat light grey.
    """
    pixels = image.float()
    grey = (pixels * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    washed = grey * (1 - amount) + _MUTED_GREY * amount
    return washed.expand_as(pixels).round().clamp(0, 255).to(torch.uint8)


def overlay_mask(
    image: Tensor,
    labels: Tensor,
    alpha: float = 0.75,
    ignore_index: int | None = 255,
    background: int | None = 0,
    outline: bool = True,
) -> Tensor:
    """Paint a label map ``[H, W]`` over ``image`` in the class colours.

    Each painted region is blended with the image at ``alpha`` and, with ``outline``, edged in
    its full colour, so a region reads as its class even over a busy image.

    Args:
        image: ``uint8 [3, H, W]``.
        labels: class indices of the same size.
        alpha: opacity of the colours inside the regions.
        ignore_index: label left unpainted (``None`` for none).
        background: label left unpainted, so the image shows through (``None`` paints it);
            also the class that :func:`class_colors` skips, as the legend does.
        outline: draw each region's edge in full colour.
    """
    labels = labels.long().cpu()
    painted = torch.ones_like(labels, dtype=torch.bool)
    for skip in {ignore_index, background} - {None}:
        painted &= labels != skip
    if not painted.any():
        return image.clone()
    colors = class_colors(int(labels[painted].max()) + 1, background).float()
    color_map = colors[labels.clamp(min=0, max=len(colors) - 1)].permute(2, 0, 1)
    out = image.cpu().float()
    out = torch.where(painted, out * (1 - alpha) + color_map * alpha, out)
    if outline:
        out = torch.where(painted & label_edges(labels), color_map, out)
    return out.round().clamp(0, 255).to(torch.uint8)


def label_edges(labels: Tensor) -> Tensor:
    """Pixels of a label map ``[H, W]`` whose label differs from one of their four neighbours."""
    padded = F.pad(labels[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    centre = padded[1:-1, 1:-1]
    return (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )


def draw_skeletons(
    image: Tensor,
    keypoints: Tensor,
    skeleton: Sequence[tuple[int, int]] | None = None,
    threshold: float = 0.0,
    radius: int = 2,
    width: int = 2,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> Tensor:
    """Draw the keypoints ``[N, K, 3]`` of ``N`` instances with their bones.

    The third value of a keypoint is its visibility (ground truth, COCO's 0/1/2) or its score
    (predictions); keypoints whose value is not above ``threshold`` are not drawn, nor are the
    bones that end at them. Each instance gets its own colour; bones and points have a thin
    dark outline, so they show on light and dark images alike.

    Args:
        image: ``uint8 [3, H, W]``.
        keypoints: ``(x, y, visibility or score)`` in the image's pixels.
        skeleton: pairs of keypoint indices joined by a bone.
        threshold: keypoints with a third value ``<= threshold`` are hidden.
        radius: keypoint radius in pixels.
        width: bone width in pixels.
        colors: colour of each instance (default: :func:`class_colors` in order).
    """
    keypoints = keypoints.detach().float().cpu().reshape(-1, keypoints.shape[-2], 3)
    if colors is None:
        colors = [tuple(c) for c in class_colors(len(keypoints)).tolist()]
    canvas = to_pil(image.cpu())
    draw = ImageDraw.Draw(canvas)
    for instance, color in zip(keypoints.tolist(), colors, strict=True):
        visible = [k[2] > threshold for k in instance]
        for a, b in skeleton or ():
            if visible[a] and visible[b]:
                line = (instance[a][0], instance[a][1], instance[b][0], instance[b][1])
                draw.line(line, fill=_OUTLINE, width=width + 2)
                draw.line(line, fill=tuple(color), width=width)
        for (x, y, _), shown in zip(instance, visible, strict=True):
            if shown:
                dot = (x - radius, y - radius, x + radius, y + radius)
                draw.ellipse(dot, fill=tuple(color), outline=_OUTLINE)
    return from_pil(canvas)


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


def titled(image: Tensor, title: str, face: Font | None = None, lines: int = 1) -> Tensor:
    """Put ``title`` in a light strip above ``image``, wrapped to its width at spaces.

    Args:
        image: the panel.
        title: its title; words go on as many lines as they need (a single word wider than
            the panel is shortened).
        face: the font.
        lines: the least number of lines of the strip, so that panels side by side whose
            titles wrap differently keep their images level (see :func:`title_lines`).
    """
    face = face or font()
    width = int(image.shape[-1])
    wrapped = wrap_text(title, width - 2, face)
    line_height = text_size("Ag", face)[1]
    height = title_height(face, max(lines, len(wrapped)))
    strip = Image.new("RGB", (width, height), (PANEL_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(strip)
    for row, text in enumerate(wrapped):
        draw.text((1, 1 + row * line_height), text, fill=(0, 0, 0), font=face)
    return torch.cat([from_pil(strip), image.cpu()], dim=-2)


def title_lines(titles: Sequence[str], width: int, face: Font | None = None) -> int:
    """Lines the longest of ``titles`` takes above a panel ``width`` pixels wide."""
    face = face or font()
    return max((len(wrap_text(t, width - 2, face)) for t in titles), default=1)


def footer(image: Tensor, text: str, face: Font | None = None) -> Tensor:
    """Put ``text`` below ``image``, wrapped to its width, in a light strip."""
    face = face or font()
    width = int(image.shape[-1])
    lines = wrap_text(text, width - 4, face)
    line_height = text_size("Ag", face)[1]
    strip = Image.new("RGB", (width, line_height * len(lines) + 4), (PANEL_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(strip)
    for row, line in enumerate(lines):
        draw.text((2, 2 + row * line_height), line, fill=(0, 0, 0), font=face)
    return torch.cat([image.cpu(), from_pil(strip)], dim=-2)


def title_height(face: Font | None = None, lines: int = 1) -> int:
    """Height in pixels of the strip :func:`titled` adds for ``lines`` lines of title."""
    return text_size("Ag", face or font())[1] * lines + 2


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
        PANEL_BACKGROUND,
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
