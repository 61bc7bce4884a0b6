"""Guides beside a picture: a class legend and a colour bar, as panels to tile next to it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from dense_lightning.viz.colors import heat_colormap
from dense_lightning.viz.text import Font, fit_text, font, from_pil, text_size

__all__ = ["PANEL_BACKGROUND", "colorbar", "legend"]

#: Grey level behind guides, titles and between tiles.
PANEL_BACKGROUND = 255
_INK = (0, 0, 0)
_SWATCH = 12  # side of a legend colour square, pixels
_GAP = 4  # pixels between a swatch and its name, between rows and columns
_BAR_WIDTH = 12  # width of the colour bar's gradient, pixels
_MAX_NAME_WIDTH = 120  # longer class names are shortened with an ellipsis


def legend(
    entries: Sequence[tuple[str, Sequence[int]]],
    height: int,
    title: str | None = None,
    face: Font | None = None,
) -> Tensor:
    """A panel listing ``(name, colour)`` entries as colour squares with names.

    Entries fill a column top to bottom, then the next column, so a long list of classes
    (COCO's 80) stays within ``height``.

    Args:
        entries: name and RGB colour of each class, in order.
        height: panel height in pixels (that of the picture it goes beside); at least one
            entry high.
        title: a heading above the entries.
        face: the font (default :func:`~dense_lightning.viz.text.font`).

    Returns:
        ``uint8 [3, height, W]``.

    Raises:
        ValueError: no entries.
    """
    if not entries:
        raise ValueError("legend needs at least one (name, colour) entry.")
    face = face or font()
    line = max(text_size("Ag", face)[1], _SWATCH) + _GAP
    top = _GAP + (line if title else 0)
    # At least one entry per column: a picture too short for that gets a taller legend.
    per_column = max((height - top) // line, 1)
    height = max(height, top + line)
    names = [fit_text(name, _MAX_NAME_WIDTH, face) for name, _ in entries]
    columns = [names[i : i + per_column] for i in range(0, len(names), per_column)]
    widths = [_SWATCH + _GAP + max(text_size(n, face)[0] for n in col) for col in columns]
    width = _GAP + sum(w + _GAP for w in widths)
    if title:
        width = max(width, text_size(title, face)[0] + 2 * _GAP)
    canvas = Image.new("RGB", (width, height), (PANEL_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_GAP, _GAP), title, fill=_INK, font=face)
    x, index = _GAP, 0
    for col, col_width in zip(columns, widths, strict=True):
        y = top
        for name in col:
            color = tuple(int(v) for v in entries[index][1])
            swatch_y = y + (line - _GAP - _SWATCH) // 2
            draw.rectangle(
                (x, swatch_y, x + _SWATCH - 1, swatch_y + _SWATCH - 1), fill=color, outline=_INK
            )
            draw.text((x + _SWATCH + _GAP, y), name, fill=_INK, font=face)
            y += line
            index += 1
        x += col_width + _GAP
    return from_pil(canvas)


def colorbar(
    vmin: float,
    vmax: float,
    height: int,
    label: str | None = None,
    colormap: Callable[[Tensor, float, float], Tensor] = heat_colormap,
    ticks: int = 5,
    face: Font | None = None,
) -> Tensor:
    """A vertical colour bar from ``vmax`` (top) to ``vmin`` (bottom) with labelled ticks.

    Args:
        vmin: value at the bottom.
        vmax: value at the top.
        height: panel height in pixels (more when that is too short for the bar).
        label: a heading above the bar (what the colours measure), one line per line of it.
        colormap: ``(values [H, W], vmin, vmax) -> uint8 [3, H, W]``, as the picture uses.
        ticks: number of labelled values, ends included (at least 2; fewer when they would
            not fit).
        face: the font (default :func:`~dense_lightning.viz.text.font`).

    Returns:
        ``uint8 [3, height, W]``.

    Raises:
        ValueError: ``vmax <= vmin`` or fewer than 2 ticks.
    """
    if vmax <= vmin or ticks < 2:
        raise ValueError(f"colorbar needs vmax > vmin and ticks >= 2; got {vmin}, {vmax}, {ticks}")
    face = face or font()
    text_h = text_size("0", face)[1]
    heading = label.splitlines() if label else []
    top = _GAP + (text_h * len(heading) + _GAP if heading else 0) + text_h // 2
    # A short picture gets a taller bar than itself rather than a bar too short to read, and
    # as many ticks as fit without their labels touching.
    bar_h = max(height - top - text_h // 2 - _GAP, 2 * text_h)
    height = top + bar_h + text_h // 2 + _GAP
    ticks = min(ticks, 1 + bar_h // text_h)
    values = [vmin + (vmax - vmin) * i / (ticks - 1) for i in range(ticks)]
    tick_texts = [_tick(v, vmax - vmin, ticks) for v in values]
    width = _GAP + _BAR_WIDTH + 3 + _GAP + max(text_size(t, face)[0] for t in tick_texts) + _GAP
    if heading:
        width = max(width, *(text_size(line, face)[0] + 2 * _GAP for line in heading))
    canvas = Image.new("RGB", (width, height), (PANEL_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    for row, line in enumerate(heading):
        draw.text((_GAP, _GAP + row * text_h), line, fill=_INK, font=face)
    column = torch.linspace(vmax, vmin, bar_h).view(bar_h, 1).expand(bar_h, _BAR_WIDTH)
    bar = colormap(column, vmin, vmax)
    canvas.paste(Image.fromarray(bar.permute(1, 2, 0).numpy()), (_GAP, top))
    draw.rectangle((_GAP - 1, top - 1, _GAP + _BAR_WIDTH, top + bar_h), outline=_INK)
    for value, text in zip(values, tick_texts, strict=True):
        y = top + round((vmax - value) / (vmax - vmin) * (bar_h - 1))
        draw.line((_GAP + _BAR_WIDTH, y, _GAP + _BAR_WIDTH + 3, y), fill=_INK)
        draw.text((_GAP + _BAR_WIDTH + 3 + _GAP, y - text_h // 2), text, fill=_INK, font=face)
    return from_pil(canvas)


def _tick(value: float, span: float, ticks: int = 5) -> str:
    """A tick label with as many decimals as the step between ``ticks`` ticks needs."""
    if span >= 10:
        return f"{value:.0f}"
    step = span / max(ticks - 1, 1)
    # The fewest decimals (two at least) that tell neighbouring ticks apart.
    return f"{value:.{max(2, math.ceil(-math.log10(step)))}f}"
