"""Callbacks: dense conversion, export, baselines, pictures, progress, interrupts, summary."""

from dense_lightning.callbacks.baselines import SegmentationBaselines
from dense_lightning.callbacks.cost import measure_cost
from dense_lightning.callbacks.dense_conversion import DenseConversion, restore_dense
from dense_lightning.callbacks.export import InverseTransferExport, WeightsSource
from dense_lightning.callbacks.interrupt import InterruptCheckpoint
from dense_lightning.callbacks.line_progress import LineProgress
from dense_lightning.callbacks.prediction_writer import PredictionImageWriter
from dense_lightning.callbacks.progress import DenseProgressBar, default_callbacks
from dense_lightning.callbacks.summary import FitSummary
from dense_lightning.callbacks.visualization import ValidationImageLogger

__all__ = [
    "DenseConversion",
    "DenseProgressBar",
    "FitSummary",
    "InterruptCheckpoint",
    "InverseTransferExport",
    "LineProgress",
    "PredictionImageWriter",
    "SegmentationBaselines",
    "ValidationImageLogger",
    "WeightsSource",
    "default_callbacks",
    "measure_cost",
    "restore_dense",
]
