"""Example pictures for the documentation, made from briefly trained models on synthetic shapes.

``python -m dense_lightning.viz.examples docs/images`` trains a segmentation and a detection
model (ResNet-10t at output stride 8, 150 steps on 96-pixel images, drawn twice as large;
half an hour on two busy CPU cores) and writes:

- ``segmentation.png``: ground truth and prediction of two validation images, with a legend;
- ``detection.png``: ground-truth and predicted boxes with captions, with a legend;
- ``dense_vs_original.png``: the detection heatmap of the original-stride model and of the
  dense model, each cell where it sits, with a colour bar.

Everything is seeded, so a rerun on the same versions draws the same pictures.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything

from dense_lightning.data import SyntheticDetectionDataModule, SyntheticSegmentationDataModule
from dense_lightning.files import atomic_write_all
from dense_lightning.tasks import ObjectDetectionTask, SemanticSegmentationTask
from dense_lightning.viz.context import VizContext
from dense_lightning.viz.dense import render_dense_vs_original
from dense_lightning.viz.png import png_writer
from dense_lightning.viz.tasks import predict_images, render_predictions, slice_batch

__all__ = ["EXAMPLE_FILES", "main", "make_examples"]

#: The files :func:`make_examples` writes.
EXAMPLE_FILES = ("segmentation.png", "detection.png", "dense_vs_original.png")


def _train(task: LightningModule, data: LightningDataModule, steps: int) -> LightningModule:
    """Fit ``task`` for ``steps`` optimizer steps on the CPU, quietly; returns it in eval mode."""
    if steps > 0:
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(task, datamodule=data)
    return task.eval()


def _validation_batch(data: LightningDataModule, count: int) -> dict:
    data.setup("validate")
    return slice_batch(next(iter(data.val_dataloader())), count)


def make_examples(
    out_dir: str | Path,
    steps: int = 150,
    image_size: int = 96,
    backbone: str = "resnet10t",
    images: int = 2,
    seed: int = 0,
    display_size: int = 192,
) -> list[Path]:
    """Train the two models and write :data:`EXAMPLE_FILES` into ``out_dir``.

    Args:
        out_dir: folder of the pictures (created if needed).
        steps: training steps of each model (0 draws untrained models).
        image_size: side of the synthetic images.
        backbone: timm backbone of both models.
        images: validation images per picture.
        seed: seed of the weights, the data and the training order.
        display_size: images are enlarged (nearest neighbour) to at least this side.

    Returns:
        The written files.
    """
    sizes = dict(image_size=image_size, num_val=images, num_predict=images, seed=seed)
    pictures = {}
    seed_everything(seed, verbose=False)
    seg_data = SyntheticSegmentationDataModule(num_classes=4, num_train=512, **sizes)
    segmentation = SemanticSegmentationTask(
        backbone=backbone, num_classes=4, output_stride=8, head_channels=64, lr=3e-3
    )
    _train(segmentation, seg_data, steps)
    batch = _validation_batch(seg_data, images)
    ctx = VizContext.from_module(segmentation, seg_data, min_size=display_size)
    predictions = predict_images(segmentation, batch, images)
    pictures["segmentation.png"] = render_predictions(batch["image"], predictions, batch, ctx)

    seed_everything(seed, verbose=False)
    det_data = SyntheticDetectionDataModule(num_classes=3, num_train=512, **sizes)
    detection = ObjectDetectionTask(
        backbone=backbone, num_classes=3, output_stride=8, head_channels=64, lr=3e-3
    )
    _train(detection, det_data, steps)
    batch = _validation_batch(det_data, images)
    ctx = VizContext.from_module(detection, det_data, min_size=display_size)
    predictions = predict_images(detection, batch, images)
    pictures["detection.png"] = render_predictions(batch["image"], predictions, batch, ctx)
    comparison = render_dense_vs_original(detection.model, batch["image"], ctx)
    pictures["dense_vs_original.png"] = comparison.image

    out = Path(out_dir)
    writers = {out / name: png_writer(picture, palette=True) for name, picture in pictures.items()}
    atomic_write_all(writers)
    return list(writers)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m dense_lightning.viz.examples OUT_DIR [--steps N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder of the pictures, e.g. docs/images")
    parser.add_argument("--steps", type=int, default=150, help="training steps per model")
    parser.add_argument("--image-size", type=int, default=96, help="side of the images")
    parser.add_argument(
        "--display-size", type=int, default=192, help="images are enlarged to this side"
    )
    parser.add_argument("--backbone", default="resnet10t", help="timm backbone")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = make_examples(
        args.out_dir,
        steps=args.steps,
        image_size=args.image_size,
        backbone=args.backbone,
        seed=args.seed,
        display_size=args.display_size,
    )
    for path in files:
        print(f"{path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
