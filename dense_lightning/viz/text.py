"""Text in pictures: one font, measured sizes, and captions shortened to fit a width."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageFont
from torch import Tensor

__all__ = [
    "FONT_SIZE",
    "Font",
    "fit_text",
    "font",
    "from_pil",
    "text_size",
    "to_pil",
    "wrap_text",
]

#: Pixel size of caption text: readable on a 128-pixel panel without covering it.
FONT_SIZE = 11

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=8)
def font(size: int = FONT_SIZE) -> Font:
    """Pillow's built-in scalable font at ``size`` pixels (its fixed bitmap font on Pillow < 10.1).

    Built in, so pictures look the same on every machine and need no font files.
    """
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument, one small bitmap font
        return ImageFont.load_default()


def text_size(text: str, face: Font) -> tuple[int, int]:
    """``(width, height)`` in pixels of one line of ``text``, from the origin ``draw.text`` uses.

    The height is the font's line height (ascent plus descent), the same for every text, so
    labels of one picture line up whatever letters they hold.
    """
    if hasattr(face, "getmetrics"):
        ascent, descent = face.getmetrics()
        height = ascent + descent
    else:
        height = face.getbbox("Ag")[3]
    return int(np.ceil(face.getlength(text))), int(height)


def fit_text(text: str, width: int, face: Font) -> str:
    """``text``, cut and ended with an ellipsis until it is at most ``width`` pixels wide.

    Returns an empty string when not even the first letter and the ellipsis fit.
    """
    if text_size(text, face)[0] <= width:
        return text
    for end in range(len(text) - 1, 0, -1):
        shorter = text[:end].rstrip() + "…"
        if text_size(shorter, face)[0] <= width:
            return shorter
    return ""


def wrap_text(text: str, width: int, face: Font) -> list[str]:
    """Break ``text`` into lines of at most ``width`` pixels at spaces (long words shortened)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_size(f"{lines[-1]} {word}", face)[0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(fit_text(word, width, face))
    return lines or [""]


def to_pil(image: Tensor) -> Image.Image:
    """``uint8 [3, H, W]`` tensor to an RGB PIL image (a copy)."""
    return Image.fromarray(np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy()))


def from_pil(image: Image.Image) -> Tensor:
    """RGB PIL image to a ``uint8 [3, H, W]`` tensor."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
