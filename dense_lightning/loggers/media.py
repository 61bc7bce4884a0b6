"""What goes to the loggers besides metrics: pictures (wandb, TensorBoard) and wandb artifacts."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from torch import Tensor

from dense_lightning.viz.draw import to_hwc

__all__ = [
    "IMAGE_LOGGERS",
    "MODEL_ARTIFACT_TYPE",
    "REPORT_ARTIFACT_TYPE",
    "image_loggers",
    "log_export_artifacts",
    "log_images",
]

IMAGE_LOGGERS: tuple[type[Logger], ...] = (WandbLogger, TensorBoardLogger)


def image_loggers(trainer: Trainer) -> list[Logger]:
    """The trainer's loggers that can show images (others, and ``fast_dev_run``'s, cannot)."""
    return [logger for logger in trainer.loggers if isinstance(logger, IMAGE_LOGGERS)]


def log_images(
    trainer: Trainer,
    images: Mapping[str, Tensor],
    captions: Mapping[str, str] | None = None,
    step: int | None = None,
) -> int:
    """Log ``uint8 [3, H, W]`` pictures under their keys to every logger that shows images.

    wandb gets a ``wandb.Image`` per key (with its caption) through ``WandbLogger.log_image``,
    which records ``trainer/global_step`` beside it; TensorBoard gets ``add_image`` at the
    global step (TensorBoard has no captions). Other loggers are skipped. Call it on rank
    zero only: loggers write on rank zero anyway, and the pictures cost time to draw.

    Args:
        trainer: the trainer whose loggers receive the pictures.
        images: key (e.g. ``"val/predictions"``) -> picture.
        captions: key -> caption, for the loggers that show one.
        step: global step; default ``trainer.global_step``.

    Returns:
        The number of loggers that received the pictures.
    """
    step = trainer.global_step if step is None else step
    captions = captions or {}
    loggers = image_loggers(trainer)
    for logger in loggers:
        for key, image in images.items():
            if isinstance(logger, WandbLogger):
                caption = {"caption": [captions[key]]} if key in captions else {}
                logger.log_image(key=key, images=[to_hwc(image)], step=step, **caption)
            else:
                logger.experiment.add_image(key, image.cpu(), global_step=step)
    return len(loggers)


MODEL_ARTIFACT_TYPE = "model"
REPORT_ARTIFACT_TYPE = "equivalence-report"


def _metadata(report: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers worth filtering artifacts by: stride, verdict, error, metrics."""
    equivalence = report.get("equivalence", {})
    return {
        "dense": report.get("dense"),
        "backbone": report.get("backbone"),
        "equivalent": equivalence.get("equivalent"),
        "max_rel_error": equivalence.get("max_rel_error"),
        "metrics": dict(report.get("metrics", {})),
    }


def log_export_artifacts(
    trainer: Trainer,
    files: Iterable[str | os.PathLike[str]],
    report: Mapping[str, Any],
    aliases: Iterable[str] = ("latest",),
) -> list[Any]:
    """Log exported files to every active ``WandbLogger`` run; a no-op without one.

    Two artifacts per run, named after the run id so that reruns add versions:

    - ``exported-model-<run id>`` (type ``"model"``): the weight files (everything that is
      not JSON), with the dense structure, the verdict, the error and the metrics as metadata;
    - ``equivalence-<run id>`` (type ``"equivalence-report"``): the JSON report(s), with the
      whole ``report`` as metadata.

    Meant to be called by ``InverseTransferExport`` after it wrote its files (rank zero).

    Args:
        trainer: the trainer whose loggers are searched for ``WandbLogger``.
        files: the exported files (``InverseTransferExport.summary["files"]``).
        report: the export summary (``InverseTransferExport.summary``): JSON-ready.
        aliases: artifact aliases.

    Returns:
        The logged ``wandb.Artifact`` objects (empty without a ``WandbLogger`` or off rank 0).

    Raises:
        FileNotFoundError: one of ``files`` does not exist.
    """
    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not loggers or not trainer.is_global_zero:
        return []
    import wandb  # only when a WandbLogger exists, so wandb stays an optional import

    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"log_export_artifacts: no such file(s): {', '.join(missing)}")
    groups = {
        ("exported-model", MODEL_ARTIFACT_TYPE, "exported model"): (
            [p for p in paths if p.suffix != ".json"],
            _metadata(report),
        ),
        ("equivalence", REPORT_ARTIFACT_TYPE, "equivalence report"): (
            [p for p in paths if p.suffix == ".json"],
            dict(report),
        ),
    }
    logged = []
    for logger in loggers:
        run = logger.experiment
        for (prefix, kind, description), (members, metadata) in groups.items():
            if not members:
                continue
            artifact = wandb.Artifact(
                f"{prefix}-{run.id}",
                type=kind,
                description=f"dense-lightning {description}",
                metadata=metadata,
            )
            for path in members:
                artifact.add_file(str(path), name=path.name)
            run.log_artifact(artifact, aliases=list(aliases))
            logged.append(artifact)
    return logged
