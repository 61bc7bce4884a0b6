"""Pictures of a task's predictions and of what "dense" means, for any of the three tasks.

The functions dispatch on data, not on task classes: a prediction (what ``predict_step``
returns for one image) is a class map ``[H, W]`` (segmentation) or a dict with ``boxes``,
``labels``, ``scores`` and, for keypoints, ``keypoints`` ``[N, K, 3]``; ground truth is read
from the batch keys ``mask``, ``boxes``/``labels`` and ``keypoints``. Raw network outputs
(for the dense vs original picture) are logits ``[B, C, h, w]`` or dicts of such maps. So a
user's LightningModule with the same formats is drawn too, without code here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from dense_lightning.equivalent import to_original
from dense_lightning.viz.colors import (
    class_color_mix,
    colorize_probabilities,
    heat_colormap,
    to_uint8_image,
)
from dense_lightning.viz.draw import (
    display_factor,
    draw_boxes,
    draw_skeletons,
    ordinal,
    overlay_mask,
    resize_nearest,
    tile,
    titled,
    upscale,
)

__all__ = [
    "DenseComparison",
    "VizContext",
    "draw_prediction",
    "draw_target",
    "predict_images",
    "render_dense_vs_original",
    "render_predictions",
    "slice_batch",
    "split_predictions",
]

Prediction = Tensor | Mapping[str, Tensor]
# Raw maps shown in the dense vs original picture, in order of preference.
_MAP_KEYS = ("keypoint_heatmap", "heatmap")


@dataclass
class VizContext:
    """What drawing needs to know about the data, plus display settings.

    Attributes:
        class_names: name of each class index (captions of boxes).
        skeleton: keypoint index pairs joined by a bone.
        num_classes: classes of segmentation maps (palette size).
        ignore_index: mask label that is not drawn.
        score_threshold: predicted boxes and instances below this score are not drawn.
        min_size: panels are enlarged (nearest neighbour) until their shorter side is this.
    """

    class_names: list[str] | None = None
    skeleton: list[tuple[int, int]] | None = None
    num_classes: int | None = None
    ignore_index: int | None = 255
    score_threshold: float = 0.3
    min_size: int = 128

    @classmethod
    def from_module(
        cls, pl_module: LightningModule, datamodule: Any = None, **kwargs: Any
    ) -> VizContext:
        """Read names, skeleton and classes from the DataModule and the task's hparams."""
        hparams = getattr(pl_module, "hparams", {})
        names = getattr(datamodule, "class_names", None)
        skeleton = getattr(datamodule, "skeleton", None)
        return cls(
            class_names=list(names) if names is not None else None,
            skeleton=[(int(a), int(b)) for a, b in skeleton] if skeleton else None,
            num_classes=hparams.get("num_classes"),
            ignore_index=hparams.get("ignore_index", 255),
            **kwargs,
        )


@dataclass
class DenseComparison:
    """The dense vs original picture and the numbers behind it.

    Attributes:
        image: ``uint8 [3, H, W]``: per image, the input, the original-stride map, the dense
            map and the dense map sampled every ``factor`` cells, each enlarged to one size.
        factor: dense cells per original cell along each axis.
        max_rel_error: largest ``|dense sampled - original|`` over the largest ``|original|``
            (NaN when the shapes do not line up, e.g. for an approximate conversion).
    """

    image: Tensor
    factor: int
    max_rel_error: float


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
    was_training = pl_module.training
    pl_module.eval()
    try:
        return split_predictions(pl_module.predict_step(batch, 0))
    finally:
        pl_module.train(was_training)


def draw_target(image: Tensor, batch: Mapping[str, Any], index: int, ctx: VizContext) -> Tensor:
    """Draw the ground truth of sample ``index`` of ``batch`` on ``image`` (``uint8``)."""
    if "mask" in batch:
        return overlay_mask(image, batch["mask"][index], ignore_index=ctx.ignore_index)
    if "keypoints" in batch:
        boxes = draw_boxes(image, batch["boxes"][index])
        return draw_skeletons(boxes, batch["keypoints"][index], ctx.skeleton)
    if "boxes" in batch:
        labels = batch["labels"][index] if "labels" in batch else None
        return draw_boxes(image, batch["boxes"][index], labels, class_names=ctx.class_names)
    return image


def draw_prediction(image: Tensor, prediction: Prediction, ctx: VizContext) -> Tensor:
    """Draw one image's prediction (class map, boxes, or instances with keypoints)."""
    if isinstance(prediction, Tensor):
        return overlay_mask(image, prediction, ignore_index=ctx.ignore_index)
    if not isinstance(prediction, Mapping) or not {"boxes", "scores"} <= prediction.keys():
        raise TypeError(
            "Cannot draw a prediction of type "
            f"{type(prediction).__name__}: expected a class map [H, W] or a dict with "
            "'boxes' and 'scores' (and 'labels' or 'keypoints'), as the tasks' predict_step "
            "returns per image."
        )
    keep = prediction["scores"] >= ctx.score_threshold
    if "keypoints" in prediction:
        boxes = draw_boxes(image, prediction["boxes"][keep], scores=prediction["scores"][keep])
        # Every keypoint of a kept instance is a prediction; -1 shows those scored 0 too.
        return draw_skeletons(boxes, prediction["keypoints"][keep], ctx.skeleton, threshold=-1)
    labels = prediction["labels"][keep] if "labels" in prediction else None
    return draw_boxes(
        image, prediction["boxes"][keep], labels, prediction["scores"][keep], ctx.class_names
    )


def render_predictions(
    images: Tensor,
    predictions: Sequence[Prediction],
    batch: Mapping[str, Any] | None = None,
    ctx: VizContext | None = None,
) -> Tensor:
    """A grid with one row per image: ground truth (when ``batch`` has it), then prediction.

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
    rows = []
    for i, prediction in enumerate(predictions):
        image = upscale(pictures[i], factor)
        row = []
        if targets is not None and any(k in targets for k in ("mask", "boxes", "keypoints")):
            row.append(titled(draw_target(image, targets, i, ctx), "target"))
        drawn = draw_prediction(image, _scale_prediction(prediction, factor), ctx)
        row.append(titled(drawn, "prediction"))
        rows.append(row)
    return tile(rows)


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


def _heat_values(output: Any, index: int) -> Tensor | None:
    """One image's heatmap ``[h, w]`` (max over channels), ``None`` for class logits."""
    if isinstance(output, Mapping):
        key = next((k for k in _MAP_KEYS if k in output), next(iter(output)))
        return output[key][index].float().sigmoid().amax(dim=0)
    if isinstance(output, list | tuple):  # feature pyramid: the last level's energy
        return output[-1][index].float().abs().mean(dim=0)
    if output.shape[1] == 1:
        return output[index, 0].float().sigmoid()
    return None


def _display_maps(outputs: Sequence[Any], index: int) -> list[Tensor]:
    """Image ``index`` of each raw output in colours, all on one scale.

    Class logits become class colours mixed by probability, stretched so that the brightest
    cell of all the maps is at full brightness; heatmaps a heat map from 0 to the largest
    value of all of them. One scale for all, so that equal maps look equal.
    """
    values = [_heat_values(output, index) for output in outputs]
    if any(v is None for v in values):
        logits = [output[index] for output in outputs]
        brightest = max(float(class_color_mix(x).max()) for x in logits)
        return [colorize_probabilities(x, brightest) for x in logits]
    vmax = max(max(float(v.max()) for v in values), 1e-12)
    return [heat_colormap(v.cpu(), 0.0, vmax) for v in values]


def _tensors(output: Any) -> list[Tensor]:
    if isinstance(output, Mapping):
        return list(output.values())
    if isinstance(output, list | tuple):
        return list(output)
    return [output]


def _lattice(output: Any, factor: int) -> Any:
    """The dense output sampled every ``factor`` cells, in the same structure."""
    if isinstance(output, Mapping):
        return {k: v[..., ::factor, ::factor] for k, v in output.items()}
    if isinstance(output, list | tuple):
        return [v[..., ::factor, ::factor] for v in output]
    return output[..., ::factor, ::factor]


def _rel_error(original: Any, sampled: Any) -> float:
    worst, scale = 0.0, 0.0
    for ref, got in zip(_tensors(original), _tensors(sampled), strict=True):
        if ref.shape != got.shape:
            return math.nan
        worst = max(worst, float((ref.float() - got.float()).abs().max()))
        scale = max(scale, float(ref.float().abs().max()))
    return worst / max(scale, 1e-12)


@torch.no_grad()
def render_dense_vs_original(
    network: nn.Module,
    images: Tensor,
    ctx: VizContext | None = None,
    original: nn.Module | None = None,
) -> DenseComparison:
    """Run the dense ``network`` and its original-stride twin on ``images``, side by side.

    Each row shows the input, the original network's map (one cell per ``original_stride``
    pixels), the dense map (one cell per ``output_stride`` pixels) and the dense map sampled
    every ``factor`` cells, which is the original map again: the dense model computes the
    original model's outputs plus the ones in between.

    Args:
        network: a model returned by ``to_dense`` (it has ``dense_info``).
        images: network inputs ``[B, 3, H, W]``.
        ctx: display settings.
        original: ``to_original(network)`` when the caller has it already (it is a copy,
            so callers drawing many batches with fixed weights can build it once).

    Raises:
        ValueError: ``network`` is not dense.
    """
    ctx = ctx or VizContext()
    info = getattr(network, "dense_info", None)
    if info is None:
        raise ValueError(
            f"{type(network).__name__} is not dense (no dense_info); convert it with to_dense "
            "or train with output_stride set to draw the dense vs original picture."
        )
    original = (to_original(network) if original is None else original).eval()
    was_training = network.training
    network.eval()
    try:
        call = getattr(info, "method", "forward")
        dense_out = getattr(network, call)(images)
        original_out = getattr(original, call)(images)
    finally:
        network.train(was_training)
    sampled = _lattice(dense_out, info.factor)
    pictures = to_uint8_image(images)
    factor = display_factor(pictures.shape[-2:], ctx.min_size)
    size = (pictures.shape[-2] * factor, pictures.shape[-1] * factor)
    titles = (
        "input",
        f"original, stride {info.original_stride}",
        f"dense, stride {info.output_stride}",
        f"dense, every {ordinal(info.factor)} cell",
    )
    rows = []
    for i in range(len(images)):
        maps = _display_maps((original_out, dense_out, sampled), i)
        panels = [upscale(pictures[i], factor), *(resize_nearest(m, size) for m in maps)]
        rows.append([titled(p, t) for p, t in zip(panels, titles, strict=True)])
    return DenseComparison(tile(rows), info.factor, _rel_error(original_out, sampled))
