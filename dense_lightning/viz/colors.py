"""Colours: a class palette, a heat colour map, and network images back to displayable bytes."""

from __future__ import annotations

import torch
from torch import Tensor

from dense_lightning.data.transforms import denormalize

__all__ = [
    "IGNORE_COLOR",
    "class_color_mix",
    "colorize_labels",
    "colorize_probabilities",
    "heat_colormap",
    "palette",
    "to_uint8_image",
]

#: Colour of ignored pixels (label ``ignore_index``) in colourised label maps.
IGNORE_COLOR: tuple[int, int, int] = (255, 255, 255)

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


def colorize_probabilities(logits: Tensor, brightest: float | None = None) -> Tensor:
    """Class logits ``[C, H, W]`` as the probability-weighted mix of the class colours.

    Where the model is sure, this is :func:`colorize_labels` of the argmax; where it hesitates,
    the colours blend, so a foreground class that is likely but not the most likely still
    shows (a young model's argmax is often background, class 0, black, everywhere).

    Args:
        logits: class scores of one image.
        brightest: the mixed colour value shown as 255 (others scaled alike): pass the
            :func:`class_color_mix` maximum over several maps to stretch them all the same.
            Default: no stretching.

    Returns:
        ``uint8 [3, H, W]``.
    """
    mixed = class_color_mix(logits)
    if brightest is not None:
        mixed = mixed * (255.0 / max(brightest, 1e-6))
    return mixed.round().clamp(0, 255).to(torch.uint8)


def class_color_mix(logits: Tensor) -> Tensor:
    """Float ``[3, H, W]`` in ``[0, 255]``: class colours weighted by softmax probabilities."""
    probabilities = logits.detach().float().cpu().softmax(dim=0)
    return torch.einsum("chw,cd->dhw", probabilities, palette(logits.shape[0]).float())


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
