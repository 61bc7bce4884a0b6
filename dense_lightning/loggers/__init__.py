"""Logger helpers: pictures to wandb and TensorBoard, exports as wandb artifacts."""

from dense_lightning.loggers.media import (
    IMAGE_LOGGERS,
    MODEL_ARTIFACT_TYPE,
    REPORT_ARTIFACT_TYPE,
    image_loggers,
    log_export_artifacts,
    log_images,
)

__all__ = [
    "IMAGE_LOGGERS",
    "MODEL_ARTIFACT_TYPE",
    "REPORT_ARTIFACT_TYPE",
    "image_loggers",
    "log_export_artifacts",
    "log_images",
]
