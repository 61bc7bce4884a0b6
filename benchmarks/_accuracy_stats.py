"""Statistics of :mod:`benchmarks.accuracy`: per-image confusions, paired bootstrap, verdicts.

Every arm is scored by one confusion matrix per test image (rows: true class, columns:
predicted class). Corpus metrics (mIoU, pixel accuracy) are ratios of sums over images, so a
bootstrap replicate resamples images (the same images for both arms of a comparison: paired),
sums their confusions and recomputes the metric; the difference of two arms is averaged over
seeds. The hierarchical variant also resamples the seeds, so training noise widens it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dense_lightning.equivalent.cells import CellGeometry, lattice_upsample

METRICS = ("miou", "pixel_acc")


def confusions(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None) -> Tensor:
    """One ``[C, C]`` confusion matrix per image of ``pred``/``target`` ``[B, H, W]``."""
    keep = torch.ones_like(target, dtype=torch.bool)
    if ignore_index is not None:
        keep = target != ignore_index
    index = (target.clamp(0, num_classes - 1) * num_classes + pred).flatten(1)
    out = torch.zeros(len(pred), num_classes * num_classes, dtype=torch.float64)
    out.scatter_add_(1, index, keep.flatten(1).to(torch.float64))
    return out.view(-1, num_classes, num_classes)


def metrics_of(summed: Tensor) -> dict[str, Tensor]:
    """The mIoU (classes in target or prediction) and pixel accuracy of ``[..., C, C]``."""
    tp = summed.diagonal(dim1=-2, dim2=-1)
    union = summed.sum(-1) + summed.sum(-2) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
    return {"miou": iou.nanmean(-1), "pixel_acc": tp.sum(-1) / summed.sum((-2, -1)).clamp(min=1)}


def scores(conf: Tensor) -> dict[str, float]:
    """The metrics of a whole test set ``[N, C, C]``."""
    return {k: float(v) for k, v in metrics_of(conf.sum(0)).items()}


def _replicates(conf: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """Metrics of every bootstrap replicate: ``weights[b, i]`` copies of image ``i``."""
    c = conf.shape[-1]
    summed = (weights @ conf.reshape(len(conf), c * c)).view(-1, c, c)
    return metrics_of(summed)


def paired_bootstrap(
    first: Sequence[Tensor],
    second: Sequence[Tensor],
    replicates: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Difference ``first - second`` of each metric, mean over seeds, with 95% intervals.

    Args:
        first: one ``[N_s, C, C]`` per seed (per-image confusions of one arm).
        second: the same images scored for the other arm.
        replicates: bootstrap replicates.
        seed: generator seed (the intervals are reproducible).

    Returns:
        Per metric: ``diff`` (on the full test sets), ``per_seed`` differences, ``ci_images``
        (images resampled within each seed, paired) and ``ci_hierarchical`` (seeds resampled
        too), each a ``[low, high]`` 95% percentile interval.
    """
    g = torch.Generator().manual_seed(seed)
    per_seed: dict[str, list[Tensor]] = {m: [] for m in METRICS}
    point: dict[str, list[float]] = {m: [] for m in METRICS}
    for a, b in zip(first, second, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"unpaired confusions: {tuple(a.shape)} vs {tuple(b.shape)}")
        weights = resample_weights(len(a), replicates, g)
        ra, rb = _replicates(a, weights), _replicates(b, weights)
        sa, sb = scores(a), scores(b)
        for m in METRICS:
            per_seed[m].append(ra[m] - rb[m])
            point[m].append(sa[m] - sb[m])
    seeds = len(point["miou"])
    pick_seeds = torch.randint(seeds, (replicates, seeds), generator=g)
    return {m: _over_seeds(per_seed[m], point[m], pick_seeds) for m in METRICS}


def _over_seeds(
    replicates: Sequence[Tensor], point: list[float], pick_seeds: Tensor
) -> dict[str, Any]:
    """Mean over seeds of per-seed differences, with the image and hierarchical intervals.

    Args:
        replicates: per seed, the ``[replicates]`` bootstrap differences.
        point: per seed, the difference on the whole test set.
        pick_seeds: ``[replicates, seeds]`` seed indices of the hierarchical resampling.
    """
    stacked = torch.stack(list(replicates), 1)  # [replicates, seeds]
    return {
        "diff": sum(point) / len(point),
        "per_seed": point,
        "ci_images": _interval(stacked.nanmean(1)),
        "ci_hierarchical": _interval(stacked.gather(1, pick_seeds).nanmean(1)),
    }


def _interval(values: Tensor) -> list[float]:
    values = values[~values.isnan()]
    return [float(values.quantile(0.025)), float(values.quantile(0.975))]


def verdict(comparison: dict[str, dict[str, Any]]) -> str:
    """``holds`` / ``reversed`` / ``inconclusive`` / ``mixed`` for a ``first - second`` claim.

    It holds when the mIoU interval (images) lies above 0 and the pixel-accuracy interval
    does not lie below 0; reversed is the mirror image; mixed when both metrics move
    significantly, in opposite directions.
    """
    main = interval_verdict(comparison["miou"]["ci_images"])
    if main == "inconclusive":
        return main
    plo, phi = comparison["pixel_acc"]["ci_images"]
    return "mixed" if (phi < 0 if main == "holds" else plo > 0) else main


def cell_fractions(masks: Tensor, num_classes: int, geometry: CellGeometry, cells: tuple) -> Tensor:
    """Class fractions of the ``stride x stride`` window around each cell centre.

    Args:
        masks: ``[B, H, W]`` class indices (ignored labels count as no class).
        num_classes: classes.
        geometry: where the cells sit.
        cells: ``(h, w)`` of the cell map.

    Returns:
        ``[B, C, h, w]`` fractions.
    """
    onehot = torch.zeros(len(masks), num_classes, *masks.shape[-2:])
    valid = masks < num_classes
    onehot.scatter_(1, masks.clamp(max=num_classes - 1).unsqueeze(1), valid.unsqueeze(1).float())
    out = torch.zeros(len(masks), num_classes, *cells)
    bounds = []
    for axis, n in enumerate(cells):
        s, length = geometry.stride[axis], masks.shape[-2 + axis]
        centres = [geometry.pixel(j, axis) for j in range(n)]
        bounds.append([(max(round(c - s / 2), 0), min(round(c + s / 2), length)) for c in centres])
    for i, (y0, y1) in enumerate(bounds[0]):
        for j, (x0, x1) in enumerate(bounds[1]):
            if y1 > y0 and x1 > x0:
                out[:, :, i, j] = onehot[:, :, y0:y1, x0:x1].mean((-2, -1))
    return out


def oracle_confusions(
    masks: Tensor, num_classes: int, ignore_index: int | None, geometry: CellGeometry, cells: tuple
) -> tuple[dict[str, Tensor], str]:
    """Per-image confusions of the background-only floor and of an oracle map at ``geometry``.

    The oracle knows the test masks. Each candidate gives every cell class scores and places
    them with the task's placement (:func:`lattice_upsample`, the same geometry): the class
    fractions of the ``stride x stride`` window around the cell, with the foreground classes
    weighted by ``w`` (a map that says "object" when a cell is partly covered), or the label
    at the cell's own pixel. The best candidate by mIoU is the ceiling: an estimate of the best
    a map at that stride reaches, not a bound (a network could place boundaries better).

    Returns:
        ``{"floor": ..., "ceiling": ...}`` ``[N, C, C]`` confusions, and the rule chosen.
    """
    fractions = cell_fractions(masks, num_classes, geometry, cells)
    size = masks.shape[-2:]
    candidates = {}
    for w in (1.0, 1.5, 2.0, 3.0, 5.0):
        weights = torch.tensor([1.0] + [w] * (num_classes - 1)).view(1, -1, 1, 1)
        scores_ = lattice_upsample(fractions * weights, geometry, size)
        candidates[f"window fractions, foreground x{w:g}"] = scores_.argmax(1)
    points = point_labels(masks, num_classes, geometry, cells)
    candidates["label at the cell's pixel"] = lattice_upsample(points, geometry, size).argmax(1)
    conf = {k: confusions(v, masks, num_classes, ignore_index) for k, v in candidates.items()}
    best = max(conf, key=lambda k: scores(conf[k])["miou"])
    floor = confusions(torch.zeros_like(masks), masks, num_classes, ignore_index)
    return {"floor": floor, "ceiling": conf[best]}, best


def point_labels(masks: Tensor, num_classes: int, geometry: CellGeometry, cells: tuple) -> Tensor:
    """One-hot ``[B, C, h, w]`` of the label at each cell's own pixel (nearest, clamped)."""
    index = []
    for axis, n in enumerate(cells):
        length = masks.shape[-2 + axis]
        pixels = [min(max(round(geometry.pixel(j, axis)), 0), length - 1) for j in range(n)]
        index.append(torch.tensor(pixels))
    labels = masks[:, index[0]][:, :, index[1]].clamp(max=num_classes - 1)
    return torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def resample_weights(size: int, replicates: int, generator: torch.Generator) -> Tensor:
    """``[replicates, size]`` bootstrap counts: how often each of ``size`` items is drawn."""
    picks = torch.randint(size, (replicates, size), generator=generator)
    weights = torch.zeros(replicates, size, dtype=torch.float64)
    return weights.scatter_add_(1, picks, torch.ones_like(picks, dtype=torch.float64))


def paired_intervals(
    first: Sequence[Tensor],
    second: Sequence[Tensor],
    first_point: Sequence[float],
    second_point: Sequence[float],
    seed: int = 0,
) -> dict[str, Any]:
    """Difference ``first - second`` of a metric already bootstrapped per seed, with intervals.

    For metrics that are not sums of per-image confusions (COCO AP): the caller scores each arm
    on the same resampled image sets (one ``[replicates]`` tensor per seed and arm, replicate
    ``r`` of every arm drawn with the same images), so the difference is paired.

    Args:
        first: per seed, the replicate values of one arm.
        second: per seed, the other arm's values on the same replicates.
        first_point: per seed, the first arm's metric on the whole test set.
        second_point: the same for the second arm.
        seed: generator seed of the seed resampling.

    Returns:
        ``diff`` (mean over seeds on the full test sets), ``per_seed`` differences,
        ``ci_images`` (images resampled within each seed) and ``ci_hierarchical`` (seeds
        resampled too), each a ``[low, high]`` 95% percentile interval.
    """
    point = [a - b for a, b in zip(first_point, second_point, strict=True)]
    diffs = [a - b for a, b in zip(first, second, strict=True)]
    g = torch.Generator().manual_seed(seed)
    pick_seeds = torch.randint(len(point), (len(diffs[0]), len(point)), generator=g)
    return _over_seeds(diffs, point, pick_seeds)


def interval_verdict(interval: Sequence[float]) -> str:
    """``holds`` / ``reversed`` / ``inconclusive``: the interval lies above, below or across 0."""
    low, high = interval
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    return "inconclusive"
