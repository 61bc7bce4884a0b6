"""Pictures of a task's predictions, ground truth beside them, for any of the three tasks.

The functions dispatch on data, not on task classes: a prediction (what ``predict_step``
returns for one image) is a class map ``[H, W]`` (segmentation) or a dict with ``boxes``,
``labels``, ``scores`` and, for keypoints, ``keypoints`` ``[N, K, 3]``; ground truth is read
from the batch keys ``mask``, ``boxes``/``labels`` and ``keypoints``. So a user's
LightningModule with the same formats is drawn too, without code here. A legend beside the
grid names the class colours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from dense_lightning.equivalent.cells import eval_mode
from dense_lightning.viz.boxes import draw_boxes
from dense_lightning.viz.colors import class_colors, to_uint8_image
from dense_lightning.viz.context import VizContext, class_entries
from dense_lightning.viz.draw import (
    display_factor,
    draw_skeletons,
    mute,
    overlay_mask,
    tile,
    title_lines,
    titled,
    upscale,
)
from dense_lightning.viz.guides import legend

__all__ = [
    "draw_prediction",
    "draw_target",
    "predict_images",
    "prediction_legend",
    "render_predictions",
    "slice_batch",
    "split_predictions",
]

Prediction = Tensor | Mapping[str, Tensor]


def slice_batch(batch: Any, stop: int, start: int = 0) -> Any:
    """Samples ``start:stop`` of a batch (a dict, list or tuple of tensors and lists)."""
    if isinstance(batch, Mapping):
        return {key: slice_batch(value, stop, start) for key, value in batch.items()}
    if isinstance(batch, Tensor):
        return batch[start:stop] if batch.ndim else batch
    if isinstance(batch, list | tuple):
        return type(batch)(batch[start:stop])
    return batch


def split_predictions(predictions: Any) -> list[Prediction]:
    """Per-image predictions from a ``predict_step`` result (a batched tensor or a list)."""
    return list(predictions)


@torch.no_grad()
def predict_images(pl_module: LightningModule, batch: Any, max_images: int) -> list[Prediction]:
    """Run ``pl_module.predict_step`` on the first ``max_images`` samples, in eval mode."""
    batch = slice_batch(batch, max_images)
    with eval_mode(pl_module):
        return split_predictions(pl_module.predict_step(batch, 0))


def draw_target(image: Tensor, batch: Mapping[str, Any], index: int, ctx: VizContext) -> Tensor:
    """Draw the ground truth of sample ``index`` of ``batch`` on ``image`` (``uint8``)."""
    if "mask" in batch:
        return overlay_mask(
            image, batch["mask"][index], ignore_index=ctx.ignore_index, background=ctx.background
        )
    if "keypoints" in batch:
        keypoints = batch["keypoints"][index]
        colors = _instance_colors(len(keypoints))
        boxes = draw_boxes(image, batch["boxes"][index], colors=colors, captions=False)
        return draw_skeletons(boxes, keypoints, ctx.skeleton, colors=colors)
    if "boxes" in batch:
        labels = batch["labels"][index] if "labels" in batch else None
        return draw_boxes(image, batch["boxes"][index], labels, class_names=ctx.class_names)
    return image


def draw_prediction(image: Tensor, prediction: Prediction, ctx: VizContext) -> Tensor:
    """Draw one image's prediction (class map, boxes, or instances with keypoints).

    Boxes and instances scored below ``ctx.score_threshold`` are left out.
    """
    if isinstance(prediction, Tensor):
        return overlay_mask(
            image, prediction, ignore_index=ctx.ignore_index, background=ctx.background
        )
    if not isinstance(prediction, Mapping) or not {"boxes", "scores"} <= prediction.keys():
        raise TypeError(
            "Cannot draw a prediction of type "
            f"{type(prediction).__name__}: expected a class map [H, W] or a dict with "
            "'boxes' and 'scores' (and 'labels' or 'keypoints'), as the tasks' predict_step "
            "returns per image."
        )
    scores = prediction["scores"]
    if "keypoints" in prediction:
        keep = (scores >= ctx.score_threshold).nonzero().flatten()
        keep = keep[scores[keep].argsort(descending=True)]
        colors = _instance_colors(len(keep))
        boxes = draw_boxes(image, prediction["boxes"][keep], scores=scores[keep], colors=colors)
        # Every keypoint of a kept instance is a prediction; -1 shows those scored 0 too.
        keypoints = prediction["keypoints"][keep]
        return draw_skeletons(boxes, keypoints, ctx.skeleton, threshold=-1, colors=colors)
    return draw_boxes(
        image,
        prediction["boxes"],
        prediction.get("labels"),
        scores,
        ctx.class_names,
        score_threshold=ctx.score_threshold,
    )


def _instance_colors(count: int) -> list[tuple[int, int, int]]:
    """One colour per instance (keypoint instances have no class to colour them by)."""
    return [(int(r), int(g), int(b)) for r, g, b in class_colors(count).tolist()]


def prediction_legend(
    predictions: Sequence[Prediction], batch: Mapping[str, Any] | None, ctx: VizContext
) -> list[tuple[str, tuple[int, int, int]]]:
    """Legend entries ``(name, colour)`` of the classes a prediction grid colours.

    Class maps and labelled boxes have one; keypoint instances, coloured one by one, none.
    """
    targets = batch or {}
    if any(isinstance(p, Tensor) for p in predictions):
        maps = [p for p in predictions if isinstance(p, Tensor)] + list(targets.get("mask", []))
        present = set().union(*(set(m.unique().tolist()) for m in maps)) - {ctx.ignore_index}
        num_classes = ctx.num_classes or max(present, default=0) + 1
        return class_entries(num_classes, ctx, ctx.background, present)
    if any("keypoints" in p for p in predictions) or "keypoints" in targets:
        return []
    labels = [p["labels"][p["scores"] >= ctx.score_threshold] for p in predictions if "labels" in p]
    labels += list(targets.get("labels", []))
    if not labels:
        return []
    present = set(torch.cat([x.reshape(-1) for x in labels]).long().tolist())
    named = len(ctx.class_names) if ctx.class_names else None
    num_classes = ctx.num_classes or named or max(present, default=0) + 1
    return class_entries(num_classes, ctx, None, present)


def render_predictions(
    images: Tensor,
    predictions: Sequence[Prediction],
    batch: Mapping[str, Any] | None = None,
    ctx: VizContext | None = None,
) -> Tensor:
    """A grid with one row per image: input, ground truth (when ``batch`` has it), prediction.

    The images are enlarged to ``ctx.min_size``; under the drawings they are shown in grey
    (see ``ctx.mute``), so that every colour there is a class colour. A legend of the class
    colours stands to the right.

    Args:
        images: network inputs ``[B, 3, H, W]`` (normalised) or ``uint8`` images.
        predictions: one prediction per image (see the module docstring).
        batch: the batch the images came from, for the ground truth.
        ctx: names, skeleton and display settings.

    Returns:
        ``uint8 [3, H', W']``.
    """
    ctx = ctx or VizContext()
    pictures = to_uint8_image(images)
    factor = display_factor(pictures.shape[-2:], ctx.min_size)
    targets = _scale_batch(batch, factor) if batch is not None else None
    has_target = targets is not None and any(k in targets for k in ("mask", "boxes", "keypoints"))
    scored = any(not isinstance(p, Tensor) for p in predictions)
    title = f"prediction, score >= {ctx.score_threshold:.2f}" if scored else "prediction"
    # Titles wrap rather than being cut; a row's panels share the height of the longest.
    lines = title_lines(["input", "target", title], int(pictures.shape[-1]) * factor)
    rows = []
    for i, prediction in enumerate(predictions):
        picture = upscale(pictures[i], factor)
        image = mute(picture, ctx.mute)
        row = [titled(picture, "input", lines=lines)]
        if has_target:
            row.append(titled(draw_target(image, targets, i, ctx), "target", lines=lines))
        drawn = draw_prediction(image, _scale_prediction(prediction, factor), ctx)
        row.append(titled(drawn, title, lines=lines))
        rows.append(row)
    grid = tile(rows)
    entries = prediction_legend(predictions, batch, ctx)
    if not entries:
        return grid
    return tile([[grid, legend(entries, int(grid.shape[-2]), title="classes")]], gap=0)


def _scale_batch(batch: Mapping[str, Any], factor: int) -> Mapping[str, Any]:
    """Ground truth of a batch drawn ``factor`` times larger: masks enlarged, coordinates scaled."""
    if factor == 1:
        return batch
    scaled = dict(batch)
    if "mask" in batch:
        scaled["mask"] = upscale(batch["mask"], factor)
    if "boxes" in batch:
        scaled["boxes"] = [boxes * factor for boxes in batch["boxes"]]
    if "keypoints" in batch:
        scaled["keypoints"] = [_scale_keypoints(k, factor) for k in batch["keypoints"]]
    return scaled


def _scale_prediction(prediction: Prediction, factor: int) -> Prediction:
    """One prediction drawn ``factor`` times larger."""
    if factor == 1:
        return prediction
    if isinstance(prediction, Tensor):
        return upscale(prediction, factor)
    scaled = dict(prediction)
    scaled["boxes"] = prediction["boxes"] * factor
    if "keypoints" in prediction:
        scaled["keypoints"] = _scale_keypoints(prediction["keypoints"], factor)
    return scaled


def _scale_keypoints(keypoints: Tensor, factor: int) -> Tensor:
    scaled = keypoints.clone()
    scaled[..., :2] *= factor
    return scaled
