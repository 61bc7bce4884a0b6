"""Cells painted where they sit on an image, each whole, even where it overhangs the image.

Cell ``j`` of a map with stride ``s`` sits at pixel ``o + s * j`` and covers the pixels
nearer to it than to its neighbours: ``s`` pixels per axis. With ``o`` near 0 (padded
networks), cell 0 covers ``s / 2`` pixels before the image's first one; drawn on the image
alone it would look half as wide as the others. So the canvas gets margins that hold every
cell whole: the parts outside the image are shown faded, and pixels that no cell covers (past
the last cell) in a neutral grey, so that every cell shows its true size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from dense_lightning.equivalent.cells import CellGeometry

__all__ = ["EMPTY_CELL", "Margins", "cell_margins", "cells_on_canvas", "on_canvas", "paint_cells"]

#: Grey of canvas pixels that no cell covers.
EMPTY_CELL = 200
_FADE = 0.45  # share of white mixed into the parts of cells that lie outside the image
_NO_MARGINS = ((0, 0), (0, 0))

#: Pixels added around the image per axis: ``((top, bottom), (left, right))``.
Margins = tuple[tuple[int, int], tuple[int, int]]


def cell_margins(
    maps: Sequence[tuple[CellGeometry, Sequence[int]]], size: Sequence[int]
) -> Margins:
    """The margins around a ``size`` ``(H, W)`` image that show every cell of every map whole.

    Args:
        maps: ``(geometry, (h, w))`` of each map drawn on the canvas.
        size: the image's ``(H, W)``.
    """
    margins = []
    for axis in (0, 1):
        before = after = 0
        for geometry, cells in maps:
            offset, stride, count = geometry.offset[axis], geometry.stride[axis], int(cells[axis])
            first = math.ceil(offset - stride / 2)  # first pixel of cell 0
            last = math.ceil(offset + stride * (count - 1) + stride / 2) - 1  # of the last cell
            before, after = max(before, -first), max(after, last - (int(size[axis]) - 1))
        margins.append((before, after))
    return (margins[0], margins[1])


def cells_on_canvas(
    geometry: CellGeometry, cells: Sequence[int], size: Sequence[int], margins: Margins
) -> tuple[Tensor, Tensor]:
    """Per axis, the cell covering each canvas pixel (``-1`` where none does).

    The canvas is the image of ``size`` with ``margins`` around it; its pixel ``i`` is image
    pixel ``i - margin_before``.
    """
    index = []
    for axis in (0, 1):
        before, after = margins[axis]
        pixels = torch.arange(-before, int(size[axis]) + after, dtype=torch.float64)
        nearest = torch.floor(geometry.cell(pixels, axis) + 0.5).long()
        index.append(torch.where((nearest >= 0) & (nearest < int(cells[axis])), nearest, -1))
    return index[0], index[1]


def paint_cells(
    colors: Tensor, geometry: CellGeometry, size: Sequence[int], margins: Margins = _NO_MARGINS
) -> Tensor:
    """Paint cell colours ``uint8 [3, h, w]`` on the canvas of a ``size`` ``(H, W)`` image.

    Every canvas pixel takes the colour of the cell that covers it (its nearest cell):
    nearest-neighbour upsampling that puts cell ``j`` at ``geometry.pixel(j)``. Pixels no
    cell covers are :data:`EMPTY_CELL` grey; the parts of cells in the ``margins`` (outside
    the image) are faded.

    Returns:
        ``uint8 [3, H + top + bottom, W + left + right]``.
    """
    rows, cols = cells_on_canvas(geometry, colors.shape[-2:], size, margins)
    painted = colors[:, rows.clamp(min=0)][:, :, cols.clamp(min=0)]
    covered = (rows[:, None] >= 0) & (cols[None, :] >= 0)
    painted = torch.where(covered, painted, torch.full_like(painted, EMPTY_CELL))
    inside = torch.zeros_like(covered)
    (top, _), (left, _) = margins
    inside[top : top + int(size[0]), left : left + int(size[1])] = True
    faded = (painted.float() * (1 - _FADE) + 255 * _FADE).round().to(torch.uint8)
    return torch.where(inside | ~covered, painted, faded)


def on_canvas(image: Tensor, margins: Margins, fill: int) -> Tensor:
    """``image`` ``uint8 [3, H, W]`` with ``margins`` of grey ``fill`` around it."""
    (top, bottom), (left, right) = margins
    if not any((top, bottom, left, right)):
        return image
    height, width = image.shape[-2:]
    canvas = torch.full((3, top + height + bottom, left + width + right), fill, dtype=torch.uint8)
    canvas[:, top : top + height, left : left + width] = image
    return canvas
