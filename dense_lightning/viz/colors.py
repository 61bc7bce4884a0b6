"""Colours: class palettes, a heat colour map, and network images back to displayable bytes."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import torch
from torch import Tensor

from dense_lightning.data.transforms import denormalize

__all__ = [
    "BACKGROUND_COLOR",
    "IGNORE_COLOR",
    "class_colors",
    "colorize_labels",
    "heat_colormap",
    "palette",
    "text_color",
    "to_uint8_image",
]

#: Colour of ignored pixels (label ``ignore_index``) in colourised label maps.
IGNORE_COLOR: tuple[int, int, int] = (255, 255, 255)

#: Colour of the background class in pictures: a light neutral grey that other classes tint.
BACKGROUND_COLOR: tuple[int, int, int] = (200, 200, 200)

# Saturated, light enough for black text, distinct from each other and from grey textures;
# more classes continue around the hue circle (see class_colors).
_CLASS_COLORS = (
    (30, 144, 255),
    (255, 140, 0),
    (50, 205, 50),
    (255, 64, 160),
    (255, 215, 0),
    (0, 210, 210),
    (220, 20, 60),
    (160, 120, 255),
    (210, 140, 70),
    (150, 220, 30),
)

# Anchors of a perceptually ordered dark-to-bright map (close to matplotlib's "inferno"),
# interpolated linearly; written out so that drawing does not import matplotlib.
_HEAT_ANCHORS = (
    (0, 0, 4),
    (40, 11, 84),
    (101, 21, 110),
    (159, 42, 99),
    (212, 72, 66),
    (245, 125, 21),
    (250, 193, 39),
    (252, 255, 164),
)


def palette(num_colors: int) -> Tensor:
    """The PASCAL VOC palette: ``uint8 [num_colors, 3]``, colour 0 black.

    Neighbouring labels get clearly different colours, and a label keeps its colour whatever
    ``num_colors`` is, so pictures of different runs compare.

    Args:
        num_colors: number of colours (labels ``0 .. num_colors - 1``).
    """
    colors = torch.zeros(num_colors, 3, dtype=torch.uint8)
    for label in range(num_colors):
        value, rgb = label, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        colors[label] = torch.tensor(rgb, dtype=torch.uint8)
    return colors


def class_colors(num_classes: int, background: int | None = None) -> Tensor:
    """Colours of classes in pictures: ``uint8 [num_classes, 3]``, bright and far apart.

    Unlike :func:`palette` (the VOC file format, whose first colours are dark), these are
    chosen to be told apart at a glance over photographs and under text. The foreground
    classes take the colours in order, so the first object class has the same colour whether
    or not a background class precedes it (segmentation's class 1 and detection's class 0).

    Args:
        num_classes: number of classes.
        background: class shown in :data:`BACKGROUND_COLOR` (``None`` for none).
    """
    colors = torch.empty(num_classes, 3, dtype=torch.uint8)
    slot = 0
    for label in range(num_classes):
        if label == background:
            colors[label] = torch.tensor(BACKGROUND_COLOR, dtype=torch.uint8)
            continue
        colors[label] = torch.tensor(_nth_color(slot), dtype=torch.uint8)
        slot += 1
    return colors


def _nth_color(slot: int) -> tuple[int, int, int]:
    """The ``slot``-th class colour: the fixed list, then golden-angle steps around the hues."""
    if slot < len(_CLASS_COLORS):
        return _CLASS_COLORS[slot]
    hue = (slot * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def text_color(background: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (RGB, by relative luminance)."""
    r, g, b = (float(v) for v in background[:3])
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def colorize_labels(labels: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """Paint a label map ``[H, W]`` with :func:`palette`: ``uint8 [3, H, W]``.

    Args:
        labels: integer class indices.
        num_classes: size of the palette; larger labels wrap around it.
        ignore_index: label painted :data:`IGNORE_COLOR` (``None`` for none).
    """
    labels = labels.long().cpu()
    colors = palette(max(num_classes, 1))
    image = colors[labels.clamp(min=0) % len(colors)].permute(2, 0, 1).contiguous()
    if ignore_index is not None:
        image[:, labels == ignore_index] = torch.tensor(IGNORE_COLOR, dtype=torch.uint8)[:, None]
    return image


def heat_colormap(values: Tensor, vmin: float = 0.0, vmax: float = 1.0) -> Tensor:
    """Map values ``[H, W]`` to colours ``uint8 [3, H, W]``, dark at ``vmin``, bright at ``vmax``.

    Args:
        values: real values; those outside ``[vmin, vmax]`` are clipped.
        vmin: value shown darkest.
        vmax: value shown brightest.
    """
    if vmax <= vmin:
        raise ValueError(f"heat_colormap needs vmax > vmin, got vmin={vmin}, vmax={vmax}")
    anchors = torch.tensor(_HEAT_ANCHORS, dtype=torch.float32)
    t = ((values.detach().float().cpu() - vmin) / (vmax - vmin)).clamp(0, 1)
    position = t * (len(anchors) - 1)
    low = position.floor().long().clamp(max=len(anchors) - 2)
    frac = (position - low).unsqueeze(-1)
    rgb = anchors[low] * (1 - frac) + anchors[low + 1] * frac
    return rgb.round().to(torch.uint8).permute(2, 0, 1).contiguous()


def to_uint8_image(image: Tensor, normalized: bool = True) -> Tensor:
    """A network input ``[3, H, W]`` (or a batch) as displayable ``uint8`` RGB.

    Args:
        image: float image(s); uint8 input is returned unchanged.
        normalized: the image was normalised with the ImageNet mean and std (what every
            dense-lightning DataModule returns); otherwise it is taken to be in ``[0, 1]``.
    """
    if image.dtype == torch.uint8:
        return image.cpu()
    image = image.detach().float().cpu()
    if normalized:
        image = denormalize(image)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)
