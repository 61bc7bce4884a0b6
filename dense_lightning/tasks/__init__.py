"""LightningModules: one base task, one file per task."""

from dense_lightning.tasks.base import BaseTask
from dense_lightning.tasks.detection import ObjectDetectionTask
from dense_lightning.tasks.image_classification import ImageClassificationTask
from dense_lightning.tasks.image_regression import ImageRegressionTask
from dense_lightning.tasks.keypoints import KeypointEstimationTask
from dense_lightning.tasks.protocol import ExportableTask
from dense_lightning.tasks.segmentation import SemanticSegmentationTask

__all__ = [
    "BaseTask",
    "ExportableTask",
    "ImageClassificationTask",
    "ImageRegressionTask",
    "KeypointEstimationTask",
    "ObjectDetectionTask",
    "SemanticSegmentationTask",
]
