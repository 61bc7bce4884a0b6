"""Rasterised shapes on textured backgrounds, the raw material of the synthetic datasets.

Everything is drawn with numpy from a caller-supplied ``numpy.random.Generator``, so a sample
is a pure function of its seed. Images are float32 ``[H, W, 3]`` in ``[0, 1]``; masks are
boolean ``[H, W]``, exact (no anti-aliasing), tested at pixel centres ``(i + 0.5, j + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SHAPES",
    "PlacedShape",
    "contrasting_colour",
    "paint",
    "place_shapes",
    "render_scene",
    "segment_mask",
    "shape_mask",
    "textured_background",
]

# Class ``c`` of the synthetic datasets is shape ``SHAPES[c]`` (detection) or
# ``SHAPES[c - 1]`` (segmentation, where 0 is background).
SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "ring", "cross", "diamond")


@dataclass(frozen=True)
class PlacedShape:
    """One drawn shape: its index into :data:`SHAPES` and its exact pixel mask."""

    kind: int
    mask: np.ndarray


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    return yy, xx


def shape_mask(kind: str, cx: float, cy: float, radius: float, size: int) -> np.ndarray:
    """Mask of a shape of circumradius ``radius`` centred at ``(cx, cy)``.

    Every shape lies inside the square ``[cx - radius, cx + radius]^2``.
    """
    yy, xx = _grid(size)
    dx, dy = xx - cx, yy - cy
    if kind == "disc":
        return dx**2 + dy**2 <= radius**2
    if kind == "square":
        return (np.abs(dx) <= 0.8 * radius) & (np.abs(dy) <= 0.8 * radius)
    if kind == "triangle":
        # Apex up; the base at y = +radius / 2. Inside = below both slanted edges.
        half_base = 0.866 * radius
        depth = dy + radius  # 0 at the apex
        inside = (dy <= radius / 2) & (depth >= 0)
        return inside & (np.abs(dx) <= depth * half_base / (1.5 * radius))
    if kind == "ring":
        dist2 = dx**2 + dy**2
        return (dist2 <= radius**2) & (dist2 >= (0.5 * radius) ** 2)
    if kind == "cross":
        arm = radius / 3
        adx, ady = np.abs(dx), np.abs(dy)
        return ((adx <= arm) & (ady <= radius)) | ((ady <= arm) & (adx <= radius))
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= radius
    raise ValueError(f"unknown shape {kind!r}; expected one of {SHAPES}")


def segment_mask(
    p0: tuple[float, float], p1: tuple[float, float], radius: float, size: int
) -> np.ndarray:
    """Pixels within ``radius`` of the segment ``p0``-``p1`` (a thick line with round caps)."""
    yy, xx = _grid(size)
    x0, y0 = p0
    vx, vy = p1[0] - x0, p1[1] - y0
    length2 = max(vx * vx + vy * vy, 1e-12)
    t = np.clip(((xx - x0) * vx + (yy - y0) * vy) / length2, 0.0, 1.0)
    return (xx - x0 - t * vx) ** 2 + (yy - y0 - t * vy) ** 2 <= radius**2


def textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random background: smooth colour noise, stripes or a gradient, plus pixel noise."""
    kind = int(rng.integers(3))
    if kind == 0:
        cells = int(rng.integers(3, 9))
        coarse = torch.from_numpy(rng.random((1, 3, cells, cells), dtype=np.float32))
        image = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        image = image[0].permute(1, 2, 0).numpy()
    else:
        yy, xx = _grid(size)
        low, high = rng.random(3, dtype=np.float32), rng.random(3, dtype=np.float32)
        angle = rng.uniform(0, np.pi)
        proj = xx * np.cos(angle) + yy * np.sin(angle)
        if kind == 1:
            period = rng.uniform(size / 20, size / 5)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / period + rng.uniform(0, 2 * np.pi))
        else:
            t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
        image = low * (1 - t[..., None]) + high * t[..., None]
    image = image + rng.normal(0, rng.uniform(0.02, 0.08), image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def contrasting_colour(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, min_distance: float = 0.3
) -> np.ndarray:
    """A random RGB colour whose mean absolute difference to ``image[mask]`` is large enough."""
    under = image[mask].mean(axis=0) if mask.any() else image.reshape(-1, 3).mean(axis=0)
    for _ in range(20):
        colour = rng.random(3, dtype=np.float32)
        if float(np.abs(colour - under).mean()) >= min_distance:
            return colour
    return (1.0 - under).astype(np.float32)


def paint(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, colour: np.ndarray
) -> None:
    """Fill ``image[mask]`` in place with ``colour`` plus a little texture noise."""
    noise = rng.normal(0, 0.03, (int(mask.sum()), 3)).astype(np.float32)
    image[mask] = np.clip(colour + noise, 0, 1)


def place_shapes(
    rng: np.random.Generator, size: int, num_kinds: int, max_objects: int
) -> list[tuple[int, float, float, float]]:
    """Draw 1 to ``max_objects`` shapes whose bounding squares neither overlap nor leave the image.

    Returns:
        ``(kind, cx, cy, radius)`` per shape, ``kind`` in ``[0, num_kinds)``.
    """
    count = int(rng.integers(1, max_objects + 1))
    min_radius = max(4.0, 0.1 * size)
    max_radius = max(min_radius, 0.22 * size)
    placed: list[tuple[int, float, float, float]] = []
    for _ in range(30 * count):
        if len(placed) == count:
            break
        radius = float(rng.uniform(min_radius, max_radius))
        cx, cy = (float(v) for v in rng.uniform(radius, size - radius, 2))
        kind = int(rng.integers(num_kinds))
        # Squares apart by one pixel, so every instance's mask is one separate blob.
        if all(
            abs(cx - ox) >= radius + o_r + 1 or abs(cy - oy) >= radius + o_r + 1
            for _, ox, oy, o_r in placed
        ):
            placed.append((kind, cx, cy, radius))
    return placed


def render_scene(
    rng: np.random.Generator, size: int, num_kinds: int, max_objects: int
) -> tuple[np.ndarray, list[PlacedShape]]:
    """A textured background with 1 to ``max_objects`` separate shapes of the first kinds.

    Args:
        rng: the only source of randomness.
        size: image side in pixels.
        num_kinds: shapes are drawn from ``SHAPES[:num_kinds]``.
        max_objects: most shapes per image.

    Returns:
        The image ``[size, size, 3]`` and the shapes in drawing order.
    """
    if not 1 <= num_kinds <= len(SHAPES):
        raise ValueError(f"num_kinds must be in [1, {len(SHAPES)}], got {num_kinds}")
    image = textured_background(rng, size)
    shapes = []
    for kind, cx, cy, radius in place_shapes(rng, size, num_kinds, max_objects):
        mask = shape_mask(SHAPES[kind], cx, cy, radius, size)
        paint(rng, image, mask, contrasting_colour(rng, image, mask))
        shapes.append(PlacedShape(kind, mask))
    return image, shapes
