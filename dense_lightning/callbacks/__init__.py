"""Callbacks: dense conversion, inverse-transfer export, pictures, progress and summary."""

from dense_lightning.callbacks.dense_conversion import DenseConversion
from dense_lightning.callbacks.export import InverseTransferExport
from dense_lightning.callbacks.prediction_writer import PredictionImageWriter
from dense_lightning.callbacks.progress import DenseProgressBar, default_callbacks
from dense_lightning.callbacks.summary import FitSummary
from dense_lightning.callbacks.visualization import ValidationImageLogger

__all__ = [
    "DenseConversion",
    "DenseProgressBar",
    "FitSummary",
    "InverseTransferExport",
    "PredictionImageWriter",
    "ValidationImageLogger",
    "default_callbacks",
]
